//! The services the tests talk to (PostgreSQL, NATS): their addresses, handed to the
//! tests through environment variables, and a quick check that they answer.

use std::net::{TcpStream, ToSocketAddrs};
use std::process::Command;
use std::time::Duration;

/// One service the test suite may need.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// Shown in progress lines.
    pub name: &'static str,
    /// The environment variable the tests read the URL from.
    pub env_var: &'static str,
    /// The URL used when the variable is not set (what `.ci/run` starts).
    pub default_url: &'static str,
}

/// PostgreSQL and NATS (JetStream), as `.ci/run` provides them.
pub const SERVICES: &[Service] = &[
    Service {
        name: "PostgreSQL",
        env_var: "ORDERS_TEST_POSTGRES_URL",
        default_url: "postgres://postgres@127.0.0.1:5432/test",
    },
    Service {
        name: "NATS",
        env_var: "ORDERS_TEST_NATS_URL",
        default_url: "nats://127.0.0.1:4222",
    },
];

/// How long a service gets to accept a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl Service {
    /// The URL in effect: the environment's, else the default.
    #[must_use]
    pub fn url(&self) -> String {
        std::env::var(self.env_var).unwrap_or_else(|_| self.default_url.to_owned())
    }
}

/// Sets each service's variable on `command` unless the environment already has it.
pub fn provide_env(command: &mut Command) {
    for service in SERVICES {
        if std::env::var_os(service.env_var).is_none() {
            command.env(service.env_var, service.default_url);
        }
    }
}

/// Prints, for each service, whether it answers on its address. A service that does not
/// answer is reported, not fatal: the tests that need it will say so themselves.
pub fn report_reachability() {
    for service in SERVICES {
        let url = service.url();
        let Some(address) = host_port(&url) else {
            eprintln!(
                "    {}: cannot tell a host:port from {}={url}",
                service.name, service.env_var
            );
            continue;
        };
        match answers(&address) {
            Ok(()) => eprintln!("    {} answers on {address}", service.name),
            Err(why) => eprintln!(
                "    WARNING: {} does not answer on {address} ({why}); tests that need it \
                 will fail. Start it with `.ci/run` or set {}.",
                service.name, service.env_var
            ),
        }
    }
}

/// Whether something accepts a TCP connection at `address` within the timeout.
pub(crate) fn answers(address: &str) -> Result<(), String> {
    let candidates = address
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve: {error}"))?;
    let mut last_error = "no address".to_owned();
    for candidate in candidates {
        match TcpStream::connect_timeout(&candidate, CONNECT_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(error) => last_error = error.to_string(),
        }
    }
    Err(last_error)
}

/// The `host:port` of a URL like `postgres://user:secret@host:5432/db?x=y`; the user
/// part (and any password in it) is dropped, so it is never printed.
#[must_use]
pub fn host_port(url: &str) -> Option<String> {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after_scheme
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let (host, port) = host_port.rsplit_once(':')?;
    if host.is_empty() {
        return None;
    }
    let port: u16 = port.parse().ok()?;
    Some(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_of_a_url_is_its_host_and_port_without_credentials() {
        assert_eq!(
            host_port("postgres://postgres:secret@127.0.0.1:5432/test?sslmode=disable"),
            Some("127.0.0.1:5432".to_owned())
        );
        assert_eq!(
            host_port("nats://127.0.0.1:4222"),
            Some("127.0.0.1:4222".to_owned())
        );
        assert_eq!(
            host_port("postgres://[::1]:5433/db"),
            Some("[::1]:5433".to_owned())
        );
    }

    #[test]
    fn a_url_without_a_port_has_no_address() {
        assert_eq!(host_port("postgres://localhost/test"), None);
        assert_eq!(host_port("nats://host:notaport"), None);
    }

    #[test]
    fn nothing_answers_on_a_port_just_released() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        assert_eq!(answers(&address), Ok(()));
        drop(listener);
        assert!(answers(&address).is_err());
    }
}
