//! RFC 8785 JSON Canonicalization Scheme: object members sorted by the UTF-16 code units of their
//! names, no whitespace, strings escaped as ECMAScript's `JSON.stringify` does, numbers written as
//! ECMAScript writes an IEEE-754 double. The same document always gives the same bytes, whoever
//! serialised it, so a signature over them survives re-formatting but no change of content.

use serde_json::Value;

/// Why a value has no canonical form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JcsError {
    /// JSON numbers are IEEE-754 doubles here; NaN and infinities do not exist in JSON.
    #[error("the number {0} has no JSON form")]
    Number(String),
    /// An integer a double cannot hold exactly: two documents differing only there would have
    /// the same canonical bytes, so one signature would vouch for both.
    #[error("the integer {0} is beyond ±2^53, where JSON numbers stop being exact; it has no canonical form")]
    Imprecise(String),
}

/// The largest integer magnitude every double holds exactly.
pub const MAX_EXACT: u64 = 1 << 53;

/// The canonical bytes of `v`.
pub fn canonical(v: &Value) -> Result<Vec<u8>, JcsError> {
    let mut out = String::new();
    write(v, &mut out)?;
    Ok(out.into_bytes())
}

fn write(v: &Value, out: &mut String) -> Result<(), JcsError> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let exact = match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => u <= MAX_EXACT,
                (None, Some(i)) => i.unsigned_abs() <= MAX_EXACT,
                (None, None) => true,
            };
            if !exact {
                return Err(JcsError::Imprecise(n.to_string()));
            }
            let x = n.as_f64().ok_or_else(|| JcsError::Number(n.to_string()))?;
            out.push_str(&number(x)?);
        }
        Value::String(s) => string(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(x, out)?;
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut keys: Vec<(&String, Vec<u16>)> = m.keys().map(|k| (k, k.encode_utf16().collect())).collect();
            keys.sort_by(|a, b| a.1.cmp(&b.1));
            out.push('{');
            for (i, (k, _)) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                string(k, out);
                out.push(':');
                write(&m[*k], out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// ECMAScript's Number::toString for a double.
pub fn number(x: f64) -> Result<String, JcsError> {
    if !x.is_finite() {
        return Err(JcsError::Number(x.to_string()));
    }
    if x == 0.0 {
        return Ok("0".into());
    }
    if x < 0.0 {
        return Ok(format!("-{}", number(-x)?));
    }
    // Rust's `{:e}` writes the shortest digits that read back to the same double: d.ddde±x.
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    let tie = even_on_tie(x, digits, exp);
    let digits = tie.as_deref().unwrap_or(digits);
    let k = digits.len() as i32;
    let n = exp.parse::<i32>().unwrap_or(0) + 1;
    Ok(if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let sign = if n - 1 < 0 { '-' } else { '+' };
        let e = (n - 1).abs();
        if k == 1 { format!("{digits}e{sign}{e}") } else { format!("{}.{}e{sign}{e}", &digits[..1], &digits[1..]) }
    })
}

/// ECMAScript picks the even last digit when the double lies exactly midway between the two
/// shortest candidates; Rust's formatter rounds such ties up. The double's exact decimal expansion
/// tells a tie: it has one digit more than the shortest form, and that digit is 5.
fn even_on_tie(x: f64, digits: &str, exp: &str) -> Option<String> {
    let exact = format!("{x:.800e}");
    let (mantissa, exact_exp) = exact.split_once('e')?;
    if exact_exp != exp {
        return None;
    }
    let all: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let exact_digits = all.trim_end_matches('0');
    let k = digits.len();
    if exact_digits.len() != k + 1 || !exact_digits.ends_with('5') {
        return None;
    }
    let down = &exact_digits[..k];
    let last = down.bytes().last()? - b'0';
    if last.is_multiple_of(2) {
        return Some(down.to_string());
    }
    // Round up: odd last digit, so adding one never carries.
    Some(format!("{}{}", &down[..k - 1], last + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The number samples of RFC 8785, appendix B.
    #[test]
    fn rfc_8785_numbers() {
        for (bits, want) in [
            (0x0000000000000000u64, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ] {
            assert_eq!(number(f64::from_bits(bits)).unwrap(), want, "{bits:#x}");
        }
        assert!(number(f64::NAN).is_err() && number(f64::INFINITY).is_err());
    }

    /// The example of RFC 8785, section 3.2.2.
    #[test]
    fn rfc_8785_example() {
        let input = r#"{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],"string":"\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/","literals":[null,true,false]}"#;
        let v: Value = serde_json::from_str(input).unwrap();
        let want = "{\"literals\":[null,true,false],\"numbers\":[333333333.3333333,1e+30,4.5,0.002,1e-27],\"string\":\"\u{20ac}$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}";
        assert_eq!(String::from_utf8(canonical(&v).unwrap()).unwrap(), want);
    }

    #[test]
    fn keys_sort_by_utf16_code_units() {
        // U+10000 (a surrogate pair starting 0xD800) sorts before U+E000 in UTF-16, after it in UTF-8.
        let v = serde_json::json!({"\u{e000}": 1, "\u{10000}": 2, "a": 3, "B": 4});
        assert_eq!(
            String::from_utf8(canonical(&v).unwrap()).unwrap(),
            "{\"B\":4,\"a\":3,\"\u{10000}\":2,\"\u{e000}\":1}"
        );
    }

    proptest! {
        /// Any finite double written canonically reads back as the same double.
        #[test]
        fn numbers_round_trip(bits in any::<u64>()) {
            let x = f64::from_bits(bits);
            prop_assume!(x.is_finite());
            let s = number(x).unwrap();
            let back: f64 = s.parse().unwrap();
            // -0 is written "0" (RFC 8785): it reads back as 0, which IEEE counts equal to -0.
            prop_assert!(back == x, "{x} -> {s} -> {back}");
        }

        /// Re-formatting a document never changes its canonical bytes.
        #[test]
        fn formatting_does_not_change_the_canonical_form(keys in proptest::collection::vec("[a-zé\u{10000}]{0,5}", 0..6), n in any::<i32>()) {
            let mut m = serde_json::Map::new();
            for (i, k) in keys.iter().enumerate() {
                m.insert(k.clone(), serde_json::json!([n, i, k, null]));
            }
            let v = Value::Object(m);
            let pretty: Value = serde_json::from_str(&serde_json::to_string_pretty(&v).unwrap()).unwrap();
            prop_assert_eq!(canonical(&v).unwrap(), canonical(&pretty).unwrap());
        }
    }
}
