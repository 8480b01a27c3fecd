//! Exact sums carried in the difference type (issue 13 §4, ADR 0007): [`WindowSum`], a count and
//! a 256-bit fixed-point total that differential adds, retracts and consolidates exactly, so a
//! total read after any sequence of edits equals the total computed afresh, bit for bit.

use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};

/// A count and an exact sum carried in the difference type (issue 13 §4, ADR 0007): `n` samples
/// and their summed contribution as an exact 256-bit fixed-point number, `units + fraction ·
/// 2⁻¹²⁸` in two's complement. In `session_impacts` it is what one source adds to one session
/// window (`n`: the samples that count, CUMULATIVE overlapping the window, DISCRETE starting in
/// it; the sum: their C1 shares of the window, or their values); in `daily_rollups_by_source`, one
/// source's CUMULATIVE shares or INTERVAL minutes of one local date (ADR 0013).
///
/// Every finite `f64` from 2⁻⁷⁵ to 2¹²⁷ in magnitude converts exactly (its 53 bits fit; a smaller
/// one is off by less than 2⁻¹²⁸, so 10⁻²⁵ keeps 14 digits), and sums and retractions are exact:
/// a total after any sequence of edits equals the total computed afresh, bit for bit, and one
/// rounding happens, when the total is read. Differential adds these as it adds counts, so a
/// total is never recomputed from its samples. Arithmetic wraps, an exact abelian group (the
/// range, ±1.7·10³⁸ units, is far beyond any sum of values within the G-bounds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct WindowSum {
    pub n: i64,
    /// The integer part (floor) of the total, in the metric's canonical unit.
    pub units: i128,
    /// The fractional part of the total, in units of 2⁻¹²⁸.
    pub fraction: u128,
}

impl WindowSum {
    /// One sample contributing `value` (canonical unit). Non-finite values never reach here
    /// (G-validation); they would count as 0, and magnitudes beyond 2¹²⁷ saturate.
    pub fn of(value: f64) -> Self {
        let (units, fraction) = fixed_of(value);
        WindowSum { n: 1, units, fraction }
    }

    /// The total in the metric's canonical unit: the exact sum, rounded once (to nearest, ties to
    /// even).
    pub fn total_f64(&self) -> f64 {
        let (negative, (units, fraction)) = if self.units < 0 {
            (true, negate(self.units, self.fraction))
        } else {
            (false, (self.units, self.fraction))
        };
        // |total| = (units · 2¹²⁸ + fraction) · 2⁻¹²⁸. Its top 128 bits, with every bit below them
        // folded into the last one (a sticky bit: 128 bits are far more than the 53 kept, so
        // it decides only ties), round once in the conversion, and the power of two is exact.
        let units = units as u128;
        let (top, shift) = if units != 0 {
            let lz = units.leading_zeros();
            let (top, rest) =
                if lz == 0 { (units, fraction) } else { ((units << lz) | (fraction >> (128 - lz)), fraction << lz) };
            (top | u128::from(rest != 0), lz as i32)
        } else if fraction != 0 {
            let lz = fraction.leading_zeros();
            (fraction << lz, 128 + lz as i32)
        } else {
            return 0.0;
        };
        // 2^−shift, shift ≤ 255: a normal f64, built from its exponent.
        let scale = f64::from_bits(((1023 - shift) as u64) << 52);
        let magnitude = top as f64 * scale;
        if negative { -magnitude } else { magnitude }
    }
}

/// `v` as `(units, fraction)` of [`WindowSum`]: exactly for `2⁻⁷⁵ ≤ |v| < 2¹²⁷`, below that off by
/// less than 2⁻¹²⁸ (the bits under 2⁻¹²⁸ are dropped).
fn fixed_of(v: f64) -> (i128, u128) {
    if !v.is_finite() || v == 0.0 {
        return (0, 0);
    }
    let bits = v.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i32;
    let mantissa = bits & ((1u64 << 52) - 1);
    // |v| = m · 2^k.
    let (m, k) = if exponent == 0 { (mantissa, -1074) } else { (mantissa | (1u64 << 52), exponent - 1075) };
    let m = u128::from(m);
    let (units, fraction) = if k >= 0 {
        if k >= 75 { (i128::MAX, 0) } else { ((m << k) as i128, 0) }
    } else {
        let s = k.unsigned_abs();
        if s >= 128 {
            // No integer part; the bits below 2⁻¹²⁸ are dropped.
            (0, if s - 128 >= 128 { 0 } else { m >> (s - 128) })
        } else {
            // m < 2⁵³, so the fraction bits (fewer than 2^min(s, 53)) shifted to 2⁻¹²⁸ fit.
            ((m >> s) as i128, (m & ((1u128 << s) - 1)) << (128 - s))
        }
    };
    if bits >> 63 == 1 { negate(units, fraction) } else { (units, fraction) }
}

/// Two's-complement negation of `units · 2¹²⁸ + fraction`.
fn negate(units: i128, fraction: u128) -> (i128, u128) {
    let fraction = (!fraction).wrapping_add(1);
    (if fraction == 0 { units.wrapping_neg() } else { !units }, fraction)
}

impl WindowSum {
    /// The total divided by `d ≥ 1`, truncated toward zero at 2⁻¹²⁸ (`n` kept).
    pub(crate) fn divided_by(&self, d: u64) -> Self {
        let negative = self.units < 0;
        let (units, fraction) = if negative { negate(self.units, self.fraction) } else { (self.units, self.fraction) };
        // |total| < 2¹²⁷, so `units` is non-negative here; long division by 64-bit limbs.
        let (units, d) = (units as u128, u128::from(d));
        let (q_units, rem) = (units / d, units % d);
        let (high, low) = (fraction >> 64, fraction & u128::from(u64::MAX));
        let step = (rem << 64) | high;
        let (q_high, rem) = (step / d, step % d);
        let step = (rem << 64) | low;
        let q_low = step / d;
        let (units, fraction) = (q_units as i128, (q_high << 64) | q_low);
        let (units, fraction) = if negative { negate(units, fraction) } else { (units, fraction) };
        WindowSum { n: self.n, units, fraction }
    }
}

impl IsZero for WindowSum {
    fn is_zero(&self) -> bool {
        self.n == 0 && self.units == 0 && self.fraction == 0
    }
}
impl Semigroup for WindowSum {
    fn plus_equals(&mut self, rhs: &Self) {
        let (fraction, carry) = self.fraction.overflowing_add(rhs.fraction);
        self.n = self.n.wrapping_add(rhs.n);
        self.units = self.units.wrapping_add(rhs.units).wrapping_add(i128::from(carry));
        self.fraction = fraction;
    }
}
impl Monoid for WindowSum {
    fn zero() -> Self {
        WindowSum::default()
    }
}
impl Abelian for WindowSum {
    fn negate(&mut self) {
        self.n = self.n.wrapping_neg();
        (self.units, self.fraction) = negate(self.units, self.fraction);
    }
}
impl Multiply<isize> for WindowSum {
    type Output = WindowSum;
    fn multiply(self, rhs: &isize) -> WindowSum {
        // units · 2¹²⁸ + fraction, times |r|: the fraction's product carries into the units.
        let r = rhs.unsigned_abs() as u128;
        let (low, high) = (self.fraction & u128::from(u64::MAX), self.fraction >> 64);
        let (a, b) = (low * r, high * r);
        let (fraction, carried) = a.overflowing_add(b << 64);
        let carry = (b >> 64) + u128::from(carried);
        let units = self.units.wrapping_mul(r as i128).wrapping_add(carry as i128);
        let mut out = WindowSum { n: self.n.wrapping_mul(r as i64), units, fraction };
        if *rhs < 0 {
            out.negate();
        }
        out
    }
}

impl Multiply<WindowSum> for isize {
    type Output = WindowSum;
    fn multiply(self, rhs: &WindowSum) -> WindowSum {
        rhs.multiply(&self)
    }
}
