//! The few H.264 bitstream bits we read ourselves: the SPS colour description and AVCC -> Annex B.
use super::ColorTags;

/// Removes emulation-prevention bytes (00 00 03 -> 00 00) to get the RBSP of a NAL unit.
fn rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Option<u32> {
        let byte = *self.data.get(self.pos / 8)?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(b as u32)
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        (0..n).try_fold(0u32, |acc, _| Some((acc << 1) | self.bit()?))
    }

    /// Exp-Golomb ue(v).
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some((1u32 << zeros) - 1 + self.bits(zeros)?)
    }

    /// Exp-Golomb se(v).
    fn se(&mut self) -> Option<i32> {
        let k = self.ue()?;
        Some(if k % 2 == 1 { k.div_ceil(2) as i32 } else { -((k / 2) as i32) })
    }

    fn skip_scaling_list(&mut self, size: usize) -> Option<()> {
        let (mut last, mut next) = (8i32, 8i32);
        for _ in 0..size {
            if next != 0 {
                next = (last + self.se()? + 256) % 256;
            }
            if next != 0 {
                last = next;
            }
        }
        Some(())
    }
}

/// The VUI colour description of an SPS NAL unit (header byte included). `None` if the SPS is
/// truncated or malformed; [`ColorTags::UNSPECIFIED`] if it carries no colour description.
pub(crate) fn sps_color(sps: &[u8]) -> Option<ColorTags> {
    let data = rbsp(sps);
    if data.len() < 4 || data[0] & 0x1f != 7 {
        return None;
    }
    let profile_idc = data[1];
    let mut r = Bits { data: &data[4..], pos: 0 };
    r.ue()?; // seq_parameter_set_id
    if matches!(profile_idc, 100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135) {
        let chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            r.bit()?; // separate_colour_plane_flag
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.bit()?; // qpprime_y_zero_transform_bypass_flag
        if r.bit()? == 1 {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? == 1 {
                    r.skip_scaling_list(if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            r.bit()?;
            r.se()?;
            r.se()?;
            for _ in 0..r.ue()? {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed_flag
    r.ue()?; // pic_width_in_mbs_minus1
    r.ue()?; // pic_height_in_map_units_minus1
    if r.bit()? == 0 {
        r.bit()?; // mb_adaptive_frame_field_flag
    }
    r.bit()?; // direct_8x8_inference_flag
    if r.bit()? == 1 {
        for _ in 0..4 {
            r.ue()?; // frame_crop_*_offset
        }
    }
    if r.bit()? == 0 {
        return Some(ColorTags::UNSPECIFIED);
    }
    if r.bit()? == 1 && r.bits(8)? == 255 {
        r.bits(32)?; // sar_width, sar_height
    }
    if r.bit()? == 1 {
        r.bit()?; // overscan_appropriate_flag
    }
    if r.bit()? == 0 {
        return Some(ColorTags::UNSPECIFIED);
    }
    r.bits(3)?; // video_format
    let full_range = r.bit()? == 1;
    if r.bit()? == 0 {
        return Some(ColorTags { full_range, ..ColorTags::UNSPECIFIED });
    }
    Some(ColorTags { primaries: r.bits(8)? as u8, transfer: r.bits(8)? as u8, matrix: r.bits(8)? as u8, full_range })
}

/// Appends the length-prefixed NAL units of an MP4 sample to `out` as Annex B (start codes).
/// Errors on a length that runs past the sample.
pub(crate) fn avcc_to_annexb(sample: &[u8], length_size: usize, out: &mut Vec<u8>) -> Result<(), String> {
    let mut rest = sample;
    while !rest.is_empty() {
        if rest.len() < length_size {
            return Err(format!("{} trailing bytes, shorter than a NAL length field", rest.len()));
        }
        let len = rest[..length_size].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
        rest = &rest[length_size..];
        if len > rest.len() {
            return Err(format!("NAL unit of {len} bytes but only {} left in the sample", rest.len()));
        }
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(&rest[..len]);
        rest = &rest[len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPS from x264 (FFmpeg 5.1): High profile, `-color_primaries bt709 -color_trc bt709
    /// -colorspace bt709 -color_range pc`; ffprobe reads the same tags.
    #[test]
    fn parses_high_profile_vui() {
        let sps = [
            0x67, 0x64, 0x00, 0x0a, 0xac, 0xd9, 0x44, 0x26, 0xc0, 0x5b, 0x80, 0x80, 0x80, 0xa0, 0x00, 0x00, 0x03, 0x00,
            0x20, 0x00, 0x00, 0x06, 0x41, 0xe2, 0x44, 0xb2, 0xc0,
        ];
        assert_eq!(sps_color(&sps), Some(ColorTags { primaries: 1, transfer: 1, matrix: 1, full_range: true }));
    }

    /// Main profile (no chroma/scaling fields), `-color_primaries bt470bg -color_trc smpte170m
    /// -colorspace smpte170m -color_range tv`: codes 5, 6, 6.
    #[test]
    fn parses_main_profile_vui() {
        let sps = [
            0x67, 0x4d, 0x40, 0x0a, 0xec, 0xa2, 0x13, 0x60, 0x2d, 0x41, 0x41, 0x81, 0x90, 0x00, 0x00, 0x03, 0x00, 0x10,
            0x00, 0x00, 0x03, 0x03, 0x20, 0xf1, 0x22, 0x59, 0x60,
        ];
        assert_eq!(sps_color(&sps), Some(ColorTags { primaries: 5, transfer: 6, matrix: 6, full_range: false }));
        assert_eq!(sps_color(&sps[..6]), None, "a truncated SPS is an error, not a guess");
    }

    #[test]
    fn avcc_lengths_are_checked() {
        let mut out = Vec::new();
        avcc_to_annexb(&[0, 0, 0, 2, 0x65, 0x88], 4, &mut out).unwrap();
        assert_eq!(out, [0, 0, 0, 1, 0x65, 0x88]);
        assert!(avcc_to_annexb(&[0, 0, 0, 9, 0x65], 4, &mut out).is_err());
    }
}
