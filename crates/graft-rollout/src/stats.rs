//! The rank test behind the statistical gates: a one-sided Mann-Whitney U test (is the
//! treatment's metric stochastically greater than the control's?), with the normal
//! approximation, tie correction and continuity correction, and the effect size that makes a
//! halt worth a human's time.
//!
//! A rank test, because the metrics of a fleet are skewed, heavy-tailed and differ from host to
//! host; it assumes no distribution, and one wild host moves it by one rank.

/// The test's outcome.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RankTest {
    /// Treatment values.
    pub n_treatment: usize,
    /// Control values.
    pub n_control: usize,
    /// U of the treatment: pairs in which the treatment value is the greater (ties count half).
    pub u: f64,
    /// The probability that a treatment value exceeds a control value (`u / (n1 n2)`): 0.5
    /// when they are alike, 1.0 when every treated host is worse than every control host.
    pub effect: f64,
    /// One-sided p-value of "the treatment is greater".
    pub p_value: f64,
    /// Median of the treatment over median of the control (for people; `None` when the
    /// control's median is zero).
    pub median_ratio: Option<f64>,
}

/// Tests whether `treatment` is stochastically greater than `control`. `None` when either is
/// empty or any value is not a number.
pub fn mann_whitney_greater(treatment: &[f64], control: &[f64]) -> Option<RankTest> {
    let (n1, n2) = (treatment.len(), control.len());
    if n1 == 0 || n2 == 0 || treatment.iter().chain(control).any(|v| v.is_nan()) {
        return None;
    }
    // 1. Rank everything together; ties share their average rank.
    let mut all: Vec<(f64, bool)> = treatment
        .iter()
        .map(|&v| (v, true))
        .chain(control.iter().map(|&v| (v, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = all.len();
    let mut rank_sum = 0.0;
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let tied = (j - i + 1) as f64;
        let rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += rank * all[i..=j].iter().filter(|(_, t)| *t).count() as f64;
        tie_term += tied * tied * tied - tied;
        i = j + 1;
    }
    // 2. U of the treatment, and its null distribution's mean and (tie-corrected) variance.
    let (f1, f2, fnn) = (n1 as f64, n2 as f64, n as f64);
    let u = rank_sum - f1 * (f1 + 1.0) / 2.0;
    let mean = f1 * f2 / 2.0;
    let variance = f1 * f2 / 12.0 * ((fnn + 1.0) - tie_term / (fnn * (fnn - 1.0)).max(1.0));
    // 3. One-sided p from the normal approximation, corrected for continuity.
    let p_value = if variance <= 0.0 {
        // Every value equal: no evidence either way.
        1.0
    } else {
        let z = (u - mean - 0.5) / variance.sqrt();
        0.5 * erfc(z / std::f64::consts::SQRT_2)
    };
    Some(RankTest {
        n_treatment: n1,
        n_control: n2,
        u,
        effect: u / (f1 * f2),
        p_value: p_value.clamp(0.0, 1.0),
        median_ratio: ratio(median(treatment), median(control)),
    })
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b != 0.0).then(|| a / b)
}

/// The median.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// The complementary error function, to a relative error below 1.2e-7 (the Chebyshev fit of
/// Press et al., "Numerical Recipes", 6.2): more than a p-value threshold needs.
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u_counts_the_pairs_the_treatment_wins() {
        // 19 beats 3 controls, 22 all 4, 16 two, 29 and 24 all 4: U = 17 of 20.
        let t = mann_whitney_greater(&[19.0, 22.0, 16.0, 29.0, 24.0], &[20.0, 11.0, 17.0, 12.0])
            .unwrap_or_else(|| panic!("no test"));
        assert_eq!(t.u, 17.0);
        assert!((t.effect - 0.85).abs() < 1e-12);
        // z = (17 - 10 - 0.5) / sqrt(5 * 4 * 10 / 12) = 1.592: p = 0.0557.
        assert!((t.p_value - 0.0557).abs() < 5e-4, "{}", t.p_value);
    }

    #[test]
    fn ties_count_half_and_all_equal_is_no_evidence() {
        let t = mann_whitney_greater(&[1.0, 1.0], &[1.0, 1.0, 1.0]).unwrap_or_else(|| panic!());
        assert_eq!(t.effect, 0.5);
        assert_eq!(t.p_value, 1.0);
        let t = mann_whitney_greater(&[2.0, 1.0], &[1.0, 0.0]).unwrap_or_else(|| panic!());
        // Pairs won: 2>1, 2>0, 1>0, and 1=1 counts half: 3.5 of 4.
        assert_eq!(t.u, 3.5);
    }

    #[test]
    fn a_clear_shift_is_significant_and_large_and_its_mirror_is_not() {
        let control: Vec<f64> = (0..50).map(f64::from).collect();
        let treated: Vec<f64> = control.iter().map(|v| v + 40.0).collect();
        let up = mann_whitney_greater(&treated, &control).unwrap_or_else(|| panic!());
        assert!(up.p_value < 1e-6 && up.effect > 0.9, "{up:?}");
        let down = mann_whitney_greater(&control, &treated).unwrap_or_else(|| panic!());
        assert!(down.p_value > 0.99 && down.effect < 0.1, "{down:?}");
    }

    #[test]
    fn nothing_to_compare_is_no_test() {
        assert!(mann_whitney_greater(&[], &[1.0]).is_none());
        assert!(mann_whitney_greater(&[f64::NAN], &[1.0]).is_none());
    }

    #[test]
    fn erfc_matches_known_values() {
        for (x, want) in [
            (0.0, 1.0),
            (1.0, 0.157_299_21),
            (2.0, 0.004_677_73),
            (-1.0, 1.842_700_79),
        ] {
            assert!((erfc(x) - want).abs() < 1e-6, "erfc({x}) = {}", erfc(x));
        }
    }
}
