//! Numbers printed as C's `printf("%g")` prints them (what clox does): six significant digits,
//! fixed notation for exponents -4..6, scientific otherwise, trailing zeros removed; `inf`,
//! `-inf`, `nan`, `-nan` (glibc shows the sign of a NaN), `-0`. Ties round to even, as glibc
//! and Rust's exact formatting both do.

use std::io::Write;

const SIGNIFICANT: i32 = 6;

pub fn format_number(n: f64, out: &mut Vec<u8>) {
    if n.is_nan() {
        out.extend_from_slice(if n.is_sign_negative() {
            b"-nan"
        } else {
            b"nan"
        });
        return;
    }
    if n.is_infinite() {
        out.extend_from_slice(if n < 0.0 { b"-inf" } else { b"inf" });
        return;
    }
    if n == 0.0 {
        out.extend_from_slice(if n.is_sign_negative() { b"-0" } else { b"0" });
        return;
    }
    // Integers below 10^6 print all their digits: the common case, without formatting twice.
    if n.fract() == 0.0 && n.abs() < 1e6 {
        let _ = write!(out, "{}", n as i64);
        return;
    }
    // The exponent %g decides with is the one of the value rounded to six digits.
    let scientific = format!("{:.*e}", (SIGNIFICANT - 1) as usize, n);
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if (-4..SIGNIFICANT).contains(&exponent) {
        let fixed = format!("{:.*}", (SIGNIFICANT - 1 - exponent) as usize, n);
        out.extend_from_slice(strip_zeros(&fixed).as_bytes());
    } else {
        out.extend_from_slice(strip_zeros(mantissa).as_bytes());
        let sign = if exponent < 0 { '-' } else { '+' };
        let _ = write!(out, "e{sign}{:02}", exponent.abs());
    }
}

/// Drops trailing zeros after a decimal point, and the point if nothing follows it.
fn strip_zeros(s: &str) -> &str {
    if !s.contains('.') {
        return s;
    }
    s.trim_end_matches('0').trim_end_matches('.')
}

#[cfg(test)]
mod tests {
    use super::format_number;

    fn g(n: f64) -> String {
        let mut out = Vec::new();
        format_number(n, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn matches_printf_g() {
        // Expected strings are what glibc's printf("%g") prints.
        let cases = [
            (1.0 / 3.0, "0.333333"),
            (1000005.0, "1e+06"),
            (1234565.0, "1.23456e+06"),
            (100000.0, "100000"),
            (1000000.0, "1e+06"),
            (123456789.0, "1.23457e+08"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-0.0, "-0"),
            (2.5, "2.5"),
            (123456.5, "123456"),
            (1234567.5, "1.23457e+06"),
            (-12.75, "-12.75"),
            (1e100, "1e+100"),
            (1.5e-300, "1.5e-300"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (999999.5, "1e+06"),
            (0.1 + 0.2, "0.3"),
        ];
        for (n, want) in cases {
            assert_eq!(g(n), want, "formatting {n:e}");
        }
        let zero = std::hint::black_box(0.0f64);
        assert_eq!(g(zero / zero), "-nan");
        assert_eq!(g(-(zero / zero)), "nan");
    }
}
