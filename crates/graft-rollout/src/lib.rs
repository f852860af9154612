//! Staged rollouts of live patches, and the health gates that decide whether a rollout may go
//! on.
//!
//! A rollout moves a stream's hosts to a new level wave by wave ([`plan`]). After each wave has
//! baked, the gates ([`gate`]) compare the *treatment* (hosts that took the new level) with the
//! *control* (hosts on the same kernel build still at the previous level, observed over the
//! same window), as Meta does for its fleet: hard gates halt on any crash, lost host or kernel
//! error, or transition failures above a limit; statistical gates compare each metric with a
//! one-sided Mann-Whitney U test ([`stats`]) and halt only when the difference is both
//! significant and large. The window in which a patch is applied is judged apart from steady
//! state: its expected short spike is reported, not taken for a regression.

pub mod gate;
pub mod model;
pub mod plan;
pub mod stats;

pub use gate::{evaluate, Decision, GateConfig, Group, HostWindow, Phase, Reason};
pub use plan::{PlanError, WavePlan};
