//! `graft demo fleet` on the real target: a server on loopback, three lab VMs whose agents reach
//! it only through serial ports bridged to 127.0.0.1, a level applied everywhere, a forged level
//! refused by every agent, and a server killed while a host applies the cumulative level.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic in a test is a failed assertion with a backtrace"
)]

mod common;

use common::{graft, run_json};

#[test]
fn the_fleet_demo_applies_signed_levels_once_refuses_a_forged_one_and_survives_a_server_kill() {
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
    for (name, host) in hosts {
        assert_eq!(host["exit_code"], 0, "{name}: {host}");
        assert_eq!(host["level"], 3, "{name}: {host}");
        // Every outcome reached the server exactly once, the one reported across the outage too.
        assert_eq!(
            host["outcomes"],
            serde_json::json!(["applied 1", "refused 2", "applied 3"]),
            "{name}: {host}"
        );
        assert!(
            host["refusal"]
                .as_str()
                .is_some_and(|r| r.contains("not signed by a key this host trusts")),
            "{name}: {host}"
        );
        // The guest's own kernel log: each signed level enabled once, the forged one never.
        assert_eq!(
            host["loads"],
            serde_json::json!({"fleet_level_1": 1, "fleet_forged": 0, "fleet_level_3": 1}),
            "{name}: {host}"
        );
    }
}
