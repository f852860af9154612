//! Wave plans: `--waves 1,5,25,100` means 1% of the selected hosts, then 5%, 25% and all of
//! them, each a cumulative share.

use std::fmt;

/// Why a wave plan is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// No waves at all.
    #[error("the wave plan is empty: give cumulative percentages ending at 100, e.g. 1,5,25,100")]
    Empty,
    /// A wave that is not a whole percentage.
    #[error("wave {index} ({text:?}) is not a whole percentage from 1 to 100")]
    NotAPercentage {
        /// 1-based.
        index: usize,
        /// What was given.
        text: String,
    },
    /// A wave that does not grow.
    #[error("wave {index} ({percent}%) does not grow past the wave before it ({before}%): shares are cumulative")]
    NotGrowing {
        /// 1-based.
        index: usize,
        /// Its share.
        percent: u8,
        /// The share before it.
        before: u8,
    },
    /// The last wave is not everyone.
    #[error(
        "the wave plan ends at {last}%, not at 100%: the last wave must reach every selected host"
    )]
    NotEndingAt100 {
        /// The last share.
        last: u8,
    },
}

/// Cumulative shares of the selected hosts, in percent, growing, ending at 100.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WavePlan {
    percents: Vec<u8>,
}

impl WavePlan {
    /// Parses `1,5,25,100`.
    pub fn parse(text: &str) -> Result<Self, PlanError> {
        if text.trim().is_empty() {
            return Err(PlanError::Empty);
        }
        let mut percents = Vec::new();
        for (i, part) in text.split(',').enumerate() {
            let part = part.trim().trim_end_matches('%');
            let percent = part
                .parse::<u8>()
                .ok()
                .filter(|p| (1..=100).contains(p))
                .ok_or_else(|| PlanError::NotAPercentage {
                    index: i + 1,
                    text: part.to_string(),
                })?;
            if let Some(&before) = percents.last() {
                if percent <= before {
                    return Err(PlanError::NotGrowing {
                        index: i + 1,
                        percent,
                        before,
                    });
                }
            }
            percents.push(percent);
        }
        match percents.last() {
            Some(100) => Ok(Self { percents }),
            Some(&last) => Err(PlanError::NotEndingAt100 { last }),
            None => Err(PlanError::Empty),
        }
    }

    /// The number of waves.
    pub fn waves(&self) -> usize {
        self.percents.len()
    }

    /// The cumulative shares.
    pub fn percents(&self) -> &[u8] {
        &self.percents
    }

    /// How many of `total` hosts have been treated once wave `wave` (1-based) is out: its
    /// share rounded up, so that the first wave of a small fleet is never empty.
    pub fn treated_after(&self, wave: usize, total: u64) -> u64 {
        let Some(&percent) = wave.checked_sub(1).and_then(|i| self.percents.get(i)) else {
            return 0;
        };
        (total * u64::from(percent)).div_ceil(100)
    }
}

impl fmt::Display for WavePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.percents.iter().map(|p| format!("{p}%")).collect();
        f.write_str(&parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_is_cumulative_and_ends_at_everyone() {
        let plan = WavePlan::parse("1, 5,25%,100").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.percents(), &[1, 5, 25, 100]);
        assert_eq!(plan.to_string(), "1%, 5%, 25%, 100%");
        assert_eq!(
            plan.treated_after(1, 3),
            1,
            "a small fleet's first wave is one host"
        );
        assert_eq!(plan.treated_after(2, 1_000_000), 50_000);
        assert_eq!(plan.treated_after(4, 7), 7);
        assert_eq!(plan.treated_after(5, 7), 0);
    }

    #[test]
    fn bad_plans_say_what_is_wrong() {
        assert_eq!(WavePlan::parse(""), Err(PlanError::Empty));
        assert_eq!(
            WavePlan::parse("1,5,25"),
            Err(PlanError::NotEndingAt100 { last: 25 })
        );
        assert_eq!(
            WavePlan::parse("5,5,100"),
            Err(PlanError::NotGrowing {
                index: 2,
                percent: 5,
                before: 5
            })
        );
        assert!(matches!(
            WavePlan::parse("0,100"),
            Err(PlanError::NotAPercentage { index: 1, .. })
        ));
        assert!(matches!(
            WavePlan::parse("10,x,100"),
            Err(PlanError::NotAPercentage { index: 2, .. })
        ));
        assert!(matches!(
            WavePlan::parse("50,150"),
            Err(PlanError::NotAPercentage { index: 2, .. })
        ));
    }
}
