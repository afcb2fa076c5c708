//! Running child processes: where the repository is, which cargo to call, and a guard
//! that kills and reaps every child this program starts, also when a step fails or panics.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use anyhow::{Context, Result, bail};

/// The repository root: the parent of the `xtask/` folder this crate lives in.
///
/// # Errors
/// When `CARGO_MANIFEST_DIR` (fixed at build time) has no parent, which only happens if
/// the crate was moved to the file-system root.
pub fn repo_root() -> Result<PathBuf> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .with_context(|| format!("{} has no parent folder", manifest_dir.display()))
}

/// The cargo to run: `$CARGO` (set by cargo for `cargo run` and for tests, so the same
/// toolchain is used all the way down), else `cargo` from `PATH`.
#[must_use]
pub fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"))
}

/// A `cargo` command with the working directory set to the repository root.
#[must_use]
pub fn cargo_command(root: &Path) -> Command {
    let mut command = Command::new(cargo());
    command.current_dir(root);
    command
}

/// Owns a running child; dropping it kills the child if it still runs and waits for it,
/// so no step leaves a process behind, whatever path the code takes out of the step.
struct ChildGuard {
    /// The child process; `Some` until the guard is dropped.
    child: Child,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // `try_wait` first: never send a signal to a pid that was already reaped.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// How a command is shown in progress lines and errors: `cargo fmt --all -- --check`.
#[must_use]
pub fn display(command: &Command) -> String {
    let program = Path::new(command.get_program())
        .file_name()
        .unwrap_or(command.get_program())
        .to_string_lossy()
        .into_owned();
    let mut shown = program;
    for arg in command.get_args() {
        shown.push(' ');
        shown.push_str(&arg.to_string_lossy());
    }
    shown
}

/// Runs a command with inherited stdin/stdout/stderr and waits for it.
///
/// # Errors
/// When the command cannot be started or exits unsuccessfully.
pub fn run(command: &mut Command) -> Result<()> {
    let shown = display(command);
    eprintln!("$ {shown}");
    let child = command
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    let mut guard = ChildGuard { child };
    let status = guard
        .child
        .wait()
        .with_context(|| format!("could not wait for `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repo_root_holds_the_workspace_manifest_and_this_crate() {
        let root = repo_root().unwrap();
        assert!(root.join("Cargo.toml").is_file());
        assert!(root.join("xtask").join("Cargo.toml").is_file());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn dropping_the_guard_kills_and_reaps_a_running_child() {
        let child = Command::new("sleep").arg("600").spawn().unwrap();
        let proc_entry = PathBuf::from(format!("/proc/{}", child.id()));
        assert!(proc_entry.exists());
        drop(ChildGuard { child });
        assert!(
            !proc_entry.exists(),
            "the child is still there (or a zombie)"
        );
    }

    #[test]
    fn a_command_is_shown_by_program_name_and_arguments() {
        let mut command = Command::new("/usr/bin/cargo");
        command.args(["fmt", "--all", "--", "--check"]);
        assert_eq!(display(&command), "cargo fmt --all -- --check");
    }

    #[test]
    fn a_failing_command_is_an_error_that_names_it() {
        let error = run(cargo_command(&repo_root().unwrap()).arg("no-such-subcommand"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`cargo no-such-subcommand` failed"),
            "{error}"
        );
    }
}
