//! `graft demo fleet` on the real target: a server on loopback, three lab VMs whose agents reach
//! it only through serial ports bridged to 127.0.0.1, a level applied everywhere, a forged level
//! refused by every agent, a server killed while a host applies the cumulative level; then a
//! staged rollout of a clean level that completes, and one of a level that logs a kernel
//! warning, halted by the server before its second wave and rolled back.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic in a test is a failed assertion with a backtrace"
)]

mod common;

use common::{graft, run_json};

#[test]
fn the_fleet_demo_applies_signed_levels_once_refuses_a_forged_one_survives_a_server_kill_and_halts_a_warning_rollout(
) {
    let summary = run_json(graft().args(["demo", "fleet", "--json"]));
    let hosts = summary["hosts"].as_object().expect("hosts");
    assert_eq!(hosts.len(), 3, "{summary}");
    assert_eq!(summary["server_starts"], 3, "{summary}");
    assert!(
        summary["refused_at_publish"]
            .as_str()
            .is_some_and(|r| r.contains("not signed by a key")),
        "{summary}"
    );
    let applying = summary["applying_when_killed"].as_str().unwrap();
    assert!(hosts.contains_key(applying), "{summary}");
    // The clean level went out in both waves; the warning level stopped at its canary.
    let clean = &summary["clean_rollout"];
    assert_eq!(
        (
            &clean["state"],
            &clean["wave"],
            &clean["waves"],
            &clean["treated"]
        ),
        (
            &serde_json::json!("completed"),
            &serde_json::json!(2),
            &serde_json::json!(2),
            &serde_json::json!(3)
        ),
        "{summary}"
    );
    // Its signed probe ran on the guests and reached the gates.
    assert!(
        clean["metrics_seen"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m == "probe:load1")),
        "{summary}"
    );
    let warning = &summary["warning_rollout"];
    assert_eq!(
        (&warning["state"], &warning["wave"], &warning["treated"]),
        (
            &serde_json::json!("halted"),
            &serde_json::json!(1),
            &serde_json::json!(1)
        ),
        "{summary}"
    );
    let warned = summary["warned_host"].as_str().unwrap();
    let warned_id = hosts[warned]["id"].as_str().unwrap();
    assert!(
        warning["halted_by"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g.as_str() == Some(&format!("kernel-error: {warned_id}"))),
        "the halt names the gate and the host: {summary}"
    );
    assert!(
        warning["reason"]
            .as_str()
            .is_some_and(|r| r.contains("kernel warnings") && r.contains(warned_id)),
        "{summary}"
    );
    for (name, host) in hosts {
        assert_eq!(host["exit_code"], 0, "{name}: {host}");
        assert_eq!(host["level"], 4, "{name}: {host}");
        // Every outcome reached the server exactly once, the one reported across the outage
        // too; only the canary took level 5, and went back to level 4.
        let mut outcomes = vec!["applied 1", "refused 2", "applied 3", "applied 4"];
        if name == warned {
            outcomes.extend(["applied 5", "applied 4"]);
        }
        assert_eq!(
            host["outcomes"],
            serde_json::json!(outcomes),
            "{name}: {host}"
        );
        assert!(
            host["refusal"]
                .as_str()
                .is_some_and(|r| r.contains("not signed by a key this host trusts")),
            "{name}: {host}"
        );
        // The guest's own kernel log: each signed level enabled once, the forged one never;
        // the canary enabled level 4 again after the rollback.
        let back = usize::from(name == warned);
        assert_eq!(
            host["loads"],
            serde_json::json!({
                "fleet_level_1": 1,
                "fleet_forged": 0,
                "fleet_level_3": 1,
                "fleet_level_4": 1 + back,
                "fleet_level_5": back,
            }),
            "{name}: {host}"
        );
    }
}
