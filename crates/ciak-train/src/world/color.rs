//! The ten named colours of the world, their exact RGB values and a perceptual contrast measure.
use serde::{Deserialize, Serialize};

/// A named colour. Objects and backgrounds use the same palette, so a caption's colour word
/// always means the same pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Red,
    Orange,
    Yellow,
    Green,
    Cyan,
    Blue,
    Purple,
    Pink,
    White,
    Black,
}

/// Below this CIE76 distance two colours are too close to tell apart reliably after an 8x VAE
/// (it rejects red/orange, orange/yellow, cyan/white, blue/purple and purple/pink).
pub const MIN_CONTRAST: f32 = 50.0;

impl Color {
    pub const ALL: [Color; 10] = [
        Color::Red,
        Color::Orange,
        Color::Yellow,
        Color::Green,
        Color::Cyan,
        Color::Blue,
        Color::Purple,
        Color::Pink,
        Color::White,
        Color::Black,
    ];

    /// The sRGB value every pixel of this colour gets.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [220, 35, 35],
            Color::Orange => [250, 140, 20],
            Color::Yellow => [250, 215, 30],
            Color::Green => [45, 165, 60],
            Color::Cyan => [20, 200, 220],
            Color::Blue => [30, 90, 230],
            Color::Purple => [145, 45, 175],
            Color::Pink => [250, 125, 190],
            Color::White => [245, 245, 245],
            Color::Black => [25, 25, 25],
        }
    }

    /// The lowercase English word, as captions write it.
    pub fn name(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Orange => "orange",
            Color::Yellow => "yellow",
            Color::Green => "green",
            Color::Cyan => "cyan",
            Color::Blue => "blue",
            Color::Purple => "purple",
            Color::Pink => "pink",
            Color::White => "white",
            Color::Black => "black",
        }
    }

    /// The palette colour nearest to `rgb` in CIELAB, for analyzers reading generated frames.
    pub fn nearest(rgb: [f32; 3]) -> Color {
        let lab = lab_f32(rgb);
        let dist = |c: Color| dist3(lab, lab_f32(c.rgb().map(f32::from)));
        Color::ALL.into_iter().min_by(|&a, &b| dist(a).total_cmp(&dist(b))).expect("palette is not empty")
    }

    /// CIE76 colour difference (Euclidean distance in CIELAB, D65).
    pub fn contrast(self, other: Color) -> f32 {
        delta_e(self.rgb().map(f32::from), other.rgb().map(f32::from))
    }

    /// Distinguishable from `other` (different name and far enough apart).
    pub fn contrasts_with(self, other: Color) -> bool {
        self != other && self.contrast(other) >= MIN_CONTRAST
    }
}

/// CIE76 difference between two sRGB colours given as 0..255 floats.
pub fn delta_e(a: [f32; 3], b: [f32; 3]) -> f32 {
    dist3(lab_f32(a), lab_f32(b))
}

fn dist3(a: [f32; 3], b: [f32; 3]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

fn lab_f32(rgb: [f32; 3]) -> [f32; 3] {
    let lin = |c: f32| {
        let c = (c / 255.0).clamp(0.0, 1.0);
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    let [r, g, b] = rgb.map(lin);
    let x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047;
    let y = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    let z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883;
    let f = |t: f32| if t > 0.008856 { t.cbrt() } else { 7.787 * t + 16.0 / 116.0 };
    [116.0 * f(y) - 16.0, 500.0 * (f(x) - f(y)), 200.0 * (f(y) - f(z))]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poor_pairs_are_rejected_and_far_pairs_kept() {
        for (a, b) in [(Color::Red, Color::Orange), (Color::Blue, Color::Purple), (Color::Cyan, Color::White)] {
            assert!(!a.contrasts_with(b), "{a:?}/{b:?} contrast {}", a.contrast(b));
        }
        for (a, b) in [(Color::Red, Color::Blue), (Color::Yellow, Color::Black), (Color::White, Color::Green)] {
            assert!(a.contrasts_with(b), "{a:?}/{b:?} contrast {}", a.contrast(b));
        }
    }

    #[test]
    fn nearest_recovers_every_palette_colour() {
        for c in Color::ALL {
            assert_eq!(Color::nearest(c.rgb().map(f32::from)), c);
        }
    }
}
