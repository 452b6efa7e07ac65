//! Human-readable durations (`250ms`, `30s`, `10m`) and sizes (`64KiB`, `1MiB`) for
//! `gateway.yaml`.
//!
//! The checks live inside `Deserialize`, so a bad value is reported by serde with the
//! key path it sits at; the message itself says what was expected, because that path is
//! all an operator gets to find it.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A duration written as an integer and a unit: `ms`, `s`, `m`, `h` or `d`.
///
/// Floats, spaces, signs and a missing unit are rejected (only `0` may omit the unit),
/// so `1.5s` or `30` never silently mean something the operator did not write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HumanDuration(pub Duration);

/// A size written as an integer and a unit: `B`, `KiB`, `MiB`, `GiB` (powers of 1024)
/// or `KB`, `MB`, `GB` (powers of 1000). Only `0` may omit the unit: a bare `1024` or a
/// `1mb` would be a guess (bytes? MiB?), and a limit guessed wrong fails silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ByteSize(pub u64);

const DURATION_HINT: &str = "expected an integer and a unit (ms, s, m, h, d), such as 250ms or 30s";
const SIZE_HINT: &str =
    "expected an integer and a unit (B, KiB, MiB, GiB, KB, MB, GB), such as 64KiB or 1MiB";

/// Splits `30s` into (`30`, `s`); `None` when there is no leading run of digits.
fn split_number(text: &str) -> Option<(u64, &str)> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let value = text[..digits].parse::<u64>().ok()?;
    Some((value, &text[digits..]))
}

impl HumanDuration {
    /// Parses the text form; the error is the full message shown to the operator.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("invalid duration \"{text}\": {DURATION_HINT}");
        let (value, unit) = split_number(text).ok_or_else(bad)?;
        let millis_per_unit: u64 = match unit {
            "" if value == 0 => 0,
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        let millis = value
            .checked_mul(millis_per_unit)
            .ok_or_else(|| format!("invalid duration \"{text}\": too large"))?;
        Ok(HumanDuration(Duration::from_millis(millis)))
    }
}

impl ByteSize {
    /// Parses the text form; the error is the full message shown to the operator.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("invalid size \"{text}\": {SIZE_HINT}");
        let (value, unit) = split_number(text).ok_or_else(bad)?;
        let multiplier: u64 = match unit {
            "" if value == 0 => 1,
            "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return Err(bad()),
        };
        value
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| format!("invalid size \"{text}\": too large"))
    }
}

impl fmt::Display for HumanDuration {
    /// The shortest exact form, so messages and `/config` show what an operator would write.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        for (unit, per) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if millis >= per && millis.is_multiple_of(per) {
                return write!(f, "{}{unit}", millis / per);
            }
        }
        write!(f, "{millis}ms")
    }
}

/// Deserializes through a string and a parse function; integers get a hint instead of a
/// serde type error, since `30` for a duration is the most common slip.
struct TextVisitor<T> {
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
}

impl<T> Visitor<'_> for TextVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        (self.parse)(&v.to_string()).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        (self.parse)(&v.to_string()).map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        (self.parse)(&v.to_string()).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextVisitor {
            expecting: DURATION_HINT,
            parse: HumanDuration::parse,
        })
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextVisitor {
            expecting: SIZE_HINT,
            parse: ByteSize::parse,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit() {
        let cases = [
            ("250ms", 250),
            ("30s", 30_000),
            ("10m", 600_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
            ("0", 0),
            ("0s", 0),
        ];
        for (text, millis) in cases {
            assert_eq!(
                HumanDuration::parse(text).unwrap().0,
                Duration::from_millis(millis),
                "{text}"
            );
        }
    }

    #[test]
    fn durations_rejected_with_the_value_quoted() {
        for text in [
            "",
            "30",
            "1.5s",
            "30 s",
            " 30s",
            "-1s",
            "5 minutes",
            "s",
            "10sec",
            "1S",
        ] {
            let err = HumanDuration::parse(text).unwrap_err();
            assert!(err.contains(&format!("\"{text}\"")), "{err}");
            assert!(err.contains("such as 250ms or 30s"), "{err}");
        }
    }

    #[test]
    fn duration_overflow_is_an_error_not_a_wrap() {
        let err = HumanDuration::parse("18446744073709551615d").unwrap_err();
        assert!(err.contains("too large"), "{err}");
        assert!(HumanDuration::parse("99999999999999999999999s").is_err());
    }

    #[test]
    fn durations_display_in_their_shortest_exact_form() {
        for text in ["250ms", "30s", "10m", "2h", "1d", "90s", "1500ms"] {
            assert_eq!(HumanDuration::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn sizes_binary_and_decimal() {
        let cases = [
            ("0", 0),
            ("512B", 512),
            ("64KiB", 65_536),
            ("1MiB", 1_048_576),
            ("1GiB", 1_073_741_824),
            ("2KB", 2_000),
            ("3MB", 3_000_000),
            ("1GB", 1_000_000_000),
        ];
        for (text, bytes) in cases {
            assert_eq!(ByteSize::parse(text).unwrap().0, bytes, "{text}");
        }
    }

    #[test]
    fn sizes_rejected() {
        for text in [
            "", "512", "1.5MiB", "1 MiB", "1mib", "1mb", "1k", "MiB", "-1", "1TiB",
        ] {
            let err = ByteSize::parse(text).unwrap_err();
            assert!(err.contains("such as 64KiB"), "{err}");
        }
        assert!(ByteSize::parse("99999999999999GiB")
            .unwrap_err()
            .contains("too large"));
    }
}
