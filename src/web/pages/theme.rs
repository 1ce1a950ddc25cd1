//! The theme colours: `branding.primary_color`, darkened where white text
//! on it would not pass WCAG AA, written as `theme.css`.

pub(super) type Rgb = [u8; 3];
pub(super) const DEFAULT_PRIMARY: Rgb = [0x3d, 0x7d, 0x16];

pub(super) fn parse_hex_color(s: &str) -> Option<Rgb> {
    let h = s.trim().strip_prefix('#')?;
    if !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let digit = |i: usize| u8::from_str_radix(h.get(i..=i)?, 16).ok();
    match h.len() {
        3 => Some([digit(0)? * 17, digit(1)? * 17, digit(2)? * 17]),
        6 => {
            let byte = |i: usize| u8::from_str_radix(h.get(i..i + 2)?, 16).ok();
            Some([byte(0)?, byte(2)?, byte(4)?])
        }
        _ => None,
    }
}

pub(super) fn hex(c: Rgb) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

fn luminance(c: Rgb) -> f64 {
    let lin = |v: u8| {
        let s = f64::from(v) / 255.0;
        if s <= 0.04045 {
            s / 12.92
        } else {
            ((s + 0.055) / 1.055).powf(2.4)
        }
    };
    0.2126 * lin(c[0]) + 0.7152 * lin(c[1]) + 0.0722 * lin(c[2])
}

/// Contrast ratio of white on `c`.
pub(super) fn contrast_with_white(c: Rgb) -> f64 {
    1.05 / (luminance(c) + 0.05)
}

fn scale(c: Rgb, f: f64) -> Rgb {
    // Values stay within 0..=255, so the casts cannot truncate.
    let s = |v: u8| (f64::from(v) * f).round().clamp(0.0, 255.0) as u8;
    [s(c[0]), s(c[1]), s(c[2])]
}

fn mix_with_white(c: Rgb, amount: f64) -> Rgb {
    let m = |v: u8| {
        (f64::from(v) * amount + 255.0 * (1.0 - amount))
            .round()
            .clamp(0.0, 255.0) as u8
    };
    [m(c[0]), m(c[1]), m(c[2])]
}

/// Darkens `c` until white text on it (and it as text on white) passes WCAG AA (4.5:1).
pub(super) fn accessible_on_white(c: Rgb) -> Rgb {
    let mut out = c;
    let mut f = 1.0;
    while contrast_with_white(out) < 4.6 && f > 0.0 {
        f -= 0.02;
        out = scale(c, f);
    }
    out
}

pub(super) fn theme_css(primary: Rgb, brand: Rgb) -> String {
    format!(
        ":root{{--primary:{};--primary-dark:{};--primary-tint:{};--brand:{}}}\n",
        hex(primary),
        hex(scale(primary, 0.78)),
        hex(mix_with_white(primary, 0.1)),
        hex(brand)
    )
}
