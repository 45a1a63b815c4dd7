//! RGB8 <-> 8-bit YCbCr 4:2:0 (I420) for the matrices H.264 streams signal.

/// Luma weights (Kr, Kb) of a YCbCr matrix; Kg = 1 - Kr - Kb.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Matrix {
    kr: f32,
    kb: f32,
}

impl Matrix {
    pub(crate) const BT709: Matrix = Matrix { kr: 0.2126, kb: 0.0722 };
    pub(crate) const BT601: Matrix = Matrix { kr: 0.299, kb: 0.114 };
    pub(crate) const BT2020: Matrix = Matrix { kr: 0.2627, kb: 0.0593 };

    /// The matrix for an H.264 `matrix_coefficients` code; unspecified or unknown reads as BT.601,
    /// as FFmpeg does.
    pub(crate) fn from_h264(code: u8) -> Matrix {
        match code {
            1 => Self::BT709,
            9 | 10 => Self::BT2020,
            _ => Self::BT601,
        }
    }
}

/// Planar I420 with even width and height: Y is w*h, U and V are (w/2)*(h/2).
pub(crate) struct I420 {
    pub y: Vec<u8>,
    pub u: Vec<u8>,
    pub v: Vec<u8>,
}

fn round_u8(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// Limited-range RGB8 -> I420 with chroma sited as H.264 assumes by default (type 0: on even
/// columns, between row pairs): RGB is filtered [1, 2, 1] across columns and averaged over the two
/// rows, then converted (the matrix is linear, so this equals filtering per-pixel chroma).
/// `width` and `height` must be even.
pub(crate) fn rgb_to_i420(rgb: &[u8], width: usize, height: usize, m: Matrix) -> I420 {
    debug_assert!(width.is_multiple_of(2) && height.is_multiple_of(2) && rgb.len() == width * height * 3);
    let kg = 1.0 - m.kr - m.kb;
    // Limited range: Y in [16, 235], Cb/Cr in [16, 240].
    let (ys, cs) = (219.0 / 255.0, 224.0 / 255.0);
    let (cb_div, cr_div) = (2.0 * (1.0 - m.kb), 2.0 * (1.0 - m.kr));
    let mut y = vec![0u8; width * height];
    for (dst, px) in y.iter_mut().zip(rgb.chunks_exact(3)) {
        let l = m.kr * px[0] as f32 + kg * px[1] as f32 + m.kb * px[2] as f32;
        *dst = round_u8(16.0 + ys * l);
    }
    let (cw, ch) = (width / 2, height / 2);
    let mut u = vec![0u8; cw * ch];
    let mut v = vec![0u8; cw * ch];
    for by in 0..ch {
        for bx in 0..cw {
            let x = 2 * bx;
            let taps = [(x.saturating_sub(1), 0.125f32), (x, 0.25), ((x + 1).min(width - 1), 0.125)];
            let mut acc = [0f32; 3];
            for row in [2 * by, 2 * by + 1] {
                for (col, wgt) in taps {
                    let i = (row * width + col) * 3;
                    for c in 0..3 {
                        acc[c] += wgt * rgb[i + c] as f32;
                    }
                }
            }
            let [r, g, b] = acc;
            let l = m.kr * r + kg * g + m.kb * b;
            u[by * cw + bx] = round_u8(128.0 + cs * (b - l) / cb_div);
            v[by * cw + bx] = round_u8(128.0 + cs * (r - l) / cr_div);
        }
    }
    I420 { y, u, v }
}

/// One decoded picture's planes with their strides (decoders pad rows).
pub(crate) struct Planes<'a> {
    pub y: &'a [u8],
    pub u: &'a [u8],
    pub v: &'a [u8],
    pub y_stride: usize,
    pub uv_stride: usize,
}

/// Bilinear weights to read chroma plane position `pos` (in chroma samples) of `len` samples.
fn taps(pos: f32, len: usize) -> (usize, usize, f32) {
    let pos = pos.clamp(0.0, (len - 1) as f32);
    let i0 = pos.floor() as usize;
    (i0, (i0 + 1).min(len - 1), pos - i0 as f32)
}

/// I420 -> RGB8 for the given matrix and range; chroma is upsampled bilinearly from type-0 sites
/// (even columns, between row pairs), the inverse of [`rgb_to_i420`].
pub(crate) fn i420_to_rgb(p: &Planes, width: usize, height: usize, m: Matrix, full_range: bool) -> Vec<u8> {
    let kg = 1.0 - m.kr - m.kb;
    let (y_off, ys, cs) = if full_range { (0.0, 1.0, 1.0) } else { (16.0, 255.0 / 219.0, 255.0 / 224.0) };
    // R = Y + 2(1-Kr) Cr, B = Y + 2(1-Kb) Cb, G from Y = Kr R + Kg G + Kb B.
    let (cr_r, cb_b) = (2.0 * (1.0 - m.kr), 2.0 * (1.0 - m.kb));
    let (cb_g, cr_g) = (-m.kb * cb_b / kg, -m.kr * cr_r / kg);
    let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
    let cols: Vec<_> = (0..width).map(|x| taps(x as f32 / 2.0, cw)).collect();
    let mut out = vec![0u8; width * height * 3];
    let mut cb_row = vec![0f32; cw];
    let mut cr_row = vec![0f32; cw];
    for row in 0..height {
        let (r0, r1, fy) = taps((row as f32 - 0.5) / 2.0, ch);
        for c in 0..cw {
            let lerp = |plane: &[u8]| {
                let a = plane[r0 * p.uv_stride + c] as f32;
                a + fy * (plane[r1 * p.uv_stride + c] as f32 - a) - 128.0
            };
            cb_row[c] = cs * lerp(p.u);
            cr_row[c] = cs * lerp(p.v);
        }
        let yrow = &p.y[row * p.y_stride..][..width];
        let orow = &mut out[row * width * 3..][..width * 3];
        for (col, &(c0, c1, fx)) in cols.iter().enumerate() {
            let l = ys * (yrow[col] as f32 - y_off);
            let cb = cb_row[c0] + fx * (cb_row[c1] - cb_row[c0]);
            let cr = cr_row[c0] + fx * (cr_row[c1] - cr_row[c0]);
            orow[col * 3] = round_u8(l + cr_r * cr);
            orow[col * 3 + 1] = round_u8(l + cb_g * cb + cr_g * cr);
            orow[col * 3 + 2] = round_u8(l + cb_b * cb);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flat colours survive RGB -> I420 -> RGB within one code value (8-bit quantisation of Y/Cb/Cr).
    #[test]
    fn flat_colours_round_trip() {
        for m in [Matrix::BT709, Matrix::BT601] {
            for rgb in [[0u8, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [12, 200, 77], [128, 128, 128]] {
                let (w, h) = (4, 2);
                let src: Vec<u8> = (0..w * h).flat_map(|_| rgb).collect();
                let yuv = rgb_to_i420(&src, w, h, m);
                let planes = Planes { y: &yuv.y, u: &yuv.u, v: &yuv.v, y_stride: w, uv_stride: w / 2 };
                let back = i420_to_rgb(&planes, w, h, m, false);
                for (a, b) in src.iter().zip(&back) {
                    assert!((*a as i32 - *b as i32).abs() <= 2, "{m:?} {rgb:?} -> {:?}", &back[..3]);
                }
            }
        }
    }

    /// The BT.709 limited-range anchors: black 16/128/128, white 235/128/128, red Cr 240.
    #[test]
    fn bt709_anchor_values() {
        let yuv = rgb_to_i420(&[0, 0, 0].repeat(4), 2, 2, Matrix::BT709);
        assert_eq!((yuv.y[0], yuv.u[0], yuv.v[0]), (16, 128, 128));
        let yuv = rgb_to_i420(&[255, 255, 255].repeat(4), 2, 2, Matrix::BT709);
        assert_eq!((yuv.y[0], yuv.u[0], yuv.v[0]), (235, 128, 128));
        let yuv = rgb_to_i420(&[255, 0, 0].repeat(4), 2, 2, Matrix::BT709);
        assert_eq!((yuv.y[0], yuv.v[0]), (63, 240));
    }
}
