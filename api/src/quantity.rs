//! Kubernetes quantities: `500m`, `1`, `0.5`, `128Mi`, `1Gi`, `1e3`.
//! Held as thousandths of the unit (millicores for cpu, millibytes for
//! memory) so that every valid quantity compares exactly.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a quantity: use a number with an optional suffix, such as 500m, 1, 0.5, 128Mi or 1Gi")]
pub struct BadQuantity(pub String);

/// A non-negative quantity in thousandths of its unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Quantity(pub u128);

/// Largest quantity accepted: far above any real machine, small enough
/// that sums over many pods cannot overflow.
const MAX_MILLIS: u128 = 1 << 100;

impl Quantity {
    pub fn parse(text: &str) -> Result<Self, BadQuantity> {
        let bad = || BadQuantity(text.to_string());
        let s = text.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
            .unwrap_or(s.len());
        let (number, suffix) = s.split_at(split);
        let number = number.strip_prefix('+').unwrap_or(number);
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && frac.is_empty() {
            return Err(bad());
        }
        if !whole
            .chars()
            .chain(frac.chars())
            .all(|c| c.is_ascii_digit())
            || frac.len() > 9
        {
            return Err(bad());
        }
        // (numerator, denominator) of the suffix's multiplier.
        let (num, den): (u128, u128) = match suffix {
            "" => (1, 1),
            "n" => (1, 1_000_000_000),
            "u" => (1, 1_000_000),
            "m" => (1, 1_000),
            "k" => (1_000, 1),
            "M" => (1_000_000, 1),
            "G" => (1_000_000_000, 1),
            "T" => (1_000_000_000_000, 1),
            "P" => (1_000_000_000_000_000, 1),
            "E" => (1_000_000_000_000_000_000, 1),
            "Ki" => (1 << 10, 1),
            "Mi" => (1 << 20, 1),
            "Gi" => (1 << 30, 1),
            "Ti" => (1 << 40, 1),
            "Pi" => (1 << 50, 1),
            "Ei" => (1 << 60, 1),
            other => match other.strip_prefix(['e', 'E']).map(str::parse::<u32>) {
                Some(Ok(exp)) if exp <= 18 => (10u128.pow(exp), 1),
                _ => return Err(bad()),
            },
        };
        // Too many digits for a u128 is refused here, too large a product
        // below: what this accepts, its Display form writes back.
        let digits = format!("{whole}{frac}");
        let mantissa: u128 = digits.parse().map_err(|_| bad())?;
        let scale = 10u128.pow(frac.len() as u32);
        // value = mantissa / scale * num / den, in thousandths, rounded up
        // as Kubernetes does.
        let numerator = mantissa
            .checked_mul(num)
            .and_then(|v| v.checked_mul(1000))
            .ok_or_else(bad)?;
        let denominator = scale * den;
        let millis = numerator.div_ceil(denominator);
        if millis > MAX_MILLIS {
            return Err(bad());
        }
        Ok(Quantity(millis))
    }

    pub fn millis(self) -> u128 {
        self.0
    }

    /// Whole units, rounded up (bytes of memory, pods).
    pub fn units(self) -> u128 {
        self.0.div_ceil(1000)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> u128 {
        Quantity::parse(s).unwrap().millis()
    }

    #[test]
    fn parses_kubernetes_forms() {
        assert_eq!(q("500m"), 500);
        assert_eq!(q("1"), 1000);
        assert_eq!(q("0.5"), 500);
        assert_eq!(q(".5"), 500);
        assert_eq!(q("2.25"), 2250);
        assert_eq!(q("128Mi"), 128 * 1024 * 1024 * 1000);
        assert_eq!(q("1Gi"), (1u128 << 30) * 1000);
        assert_eq!(q("1k"), 1_000_000);
        assert_eq!(q("1e3"), 1_000_000);
        assert_eq!(q("1n"), 1, "rounded up to a thousandth");
        assert_eq!(Quantity::parse("1.5Gi").unwrap().units(), 3 << 29);
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            "",
            "m",
            "abc",
            "1.2.3",
            "-1",
            "1x",
            "1 Gi",
            "1e99",
            "1.0000000001",
            "99999999999999999999999999Ei",
        ] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn compares_across_suffixes() {
        assert!(Quantity::parse("1Gi").unwrap() > Quantity::parse("1G").unwrap());
        assert_eq!(
            Quantity::parse("1000m").unwrap(),
            Quantity::parse("1").unwrap()
        );
        assert_eq!(Quantity::parse("1500m").unwrap().to_string(), "1500m");
        assert_eq!(Quantity::parse("2").unwrap().to_string(), "2");
    }
}
