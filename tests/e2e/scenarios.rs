//! Every demo scenario as a test, against every store.

use app::scenarios;
use tests::ALL_STORES;

async fn run_scenario(name: &str) {
    let scenario = scenarios::all().into_iter().find(|s| s.name == name);
    let Some(scenario) = scenario else {
        panic!("no scenario named {name}")
    };
    for kind in ALL_STORES {
        let fresh = kind
            .fresh()
            .await
            .unwrap_or_else(|e| panic!("{kind:?} store: {e:#}"));
        let Some(fresh) = fresh else { continue };
        let report = scenario.run(fresh.stores.clone()).await;
        fresh.remove().await;
        assert!(report.passed(), "{kind:?} store:\n{}", report.render());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_reaches_stock_reserved() {
    run_scenario("happy path").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_answers_change_nothing_and_pay_once() {
    run_scenario("replayed payment.approved and stock.reserved").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_awaiting_payment_refunds_a_late_approval() {
    run_scenario("cancel while AwaitingPayment").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_paid_refunds_and_releases() {
    run_scenario("cancel while Paid").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_stock_reserved_refunds_and_releases() {
    run_scenario("cancel while StockReserved").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_payment_cancels_the_order() {
    run_scenario("payment declined").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_after_the_deadline_is_refunded_after_the_order_is_cancelled() {
    run_scenario("payment after the deadline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_stock_after_payment_cancels_and_refunds() {
    run_scenario("out of stock after payment").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_reserved_for_an_unpaid_order_is_rejected() {
    run_scenario("stock.reserved for an unpaid order").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_for_an_unknown_order_is_rejected() {
    run_scenario("payment.approved for an unknown order").await;
}

#[test]
fn every_demo_scenario_has_a_test_here() {
    let source = include_str!("scenarios.rs");
    for scenario in scenarios::all() {
        assert!(
            source.contains(&format!("run_scenario(\"{}\")", scenario.name)),
            "no test for {}",
            scenario.name
        );
    }
}
