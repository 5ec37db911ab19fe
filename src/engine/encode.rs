//! Picture files: PNG with the `AIGC` record in an iTXt chunk, and JPEG (≤ a byte budget, 2 MB for WeChat) with it
//! in an XMP packet (namespace http://www.tc260.org.cn/ns/AIGC/1.0/).

use super::Picture;
use super::label::AigcRecord;

/// Encoding failures.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The PNG encoder failed.
    #[error("PNG: {0}")]
    Png(#[from] png::EncodingError),
    /// The JPEG encoder failed.
    #[error("JPEG: {0}")]
    Jpeg(#[from] jpeg_encoder::EncodingError),
    /// No quality setting fits the budget.
    #[error("JPEG does not fit in {budget} bytes even at quality {quality}")]
    TooLarge {
        /// The budget.
        budget: usize,
        /// The lowest quality tried.
        quality: u8,
    },
    /// The picture is larger than JPEG allows.
    #[error("picture {0}x{1} is too large to encode")]
    Dimensions(u32, u32),
}

/// WeChat's limit for image messages.
pub const WECHAT_JPEG_BUDGET: usize = 2 * 1024 * 1024;
const XMP_HEADER: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";

fn escape_xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The XMP packet carrying the record.
pub fn xmp_packet(record: &AigcRecord) -> String {
    format!(
        concat!(
            "<?xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>",
            "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">",
            "<rdf:Description rdf:about=\"\" xmlns:TC260=\"http://www.tc260.org.cn/ns/AIGC/1.0/\" TC260:AIGC=\"{}\"/>",
            "</rdf:RDF></x:xmpmeta><?xpacket end=\"w\"?>"
        ),
        escape_xml(&record.to_json())
    )
}

/// PNG bytes with the record under the iTXt keyword `AIGC`.
pub fn png(picture: &Picture, record: &AigcRecord) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, picture.width, picture.height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.add_itxt_chunk("AIGC".into(), record.to_json())?;
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&picture.to_rgb8())?;
    writer.finish()?;
    Ok(out)
}

/// JPEG bytes at the highest quality (92 down to 50) that fits `budget`, with the record in XMP.
pub fn jpeg(picture: &Picture, record: &AigcRecord, budget: usize) -> Result<Vec<u8>, EncodeError> {
    let (w, h) = (
        u16::try_from(picture.width)
            .map_err(|_| EncodeError::Dimensions(picture.width, picture.height))?,
        u16::try_from(picture.height)
            .map_err(|_| EncodeError::Dimensions(picture.width, picture.height))?,
    );
    let rgb = picture.to_rgb8();
    let mut xmp = XMP_HEADER.to_vec();
    xmp.extend_from_slice(xmp_packet(record).as_bytes());
    let mut quality = 92u8;
    loop {
        let mut out = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality);
        encoder.add_app_segment(1, xmp.clone())?;
        encoder.encode(&rgb, w, h, jpeg_encoder::ColorType::Rgb)?;
        if out.len() <= budget {
            return Ok(out);
        }
        if quality <= 50 {
            return Err(EncodeError::TooLarge { budget, quality });
        }
        quality -= 7;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noisy(w: u32, h: u32) -> Picture {
        let mut n = super::super::noise::Noise::new(3);
        let rgb = n
            .normals((w * h * 3) as usize)
            .into_iter()
            .map(|v| (v * 0.25 + 0.5).clamp(0.0, 1.0))
            .collect();
        Picture {
            width: w,
            height: h,
            rgb,
        }
    }

    #[test]
    fn png_carries_the_record() {
        let record = AigcRecord::new("画笔 huabi", "7");
        let bytes = png(&noisy(16, 8), &record).expect("png");
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let reader = decoder.read_info().expect("valid png");
        let info = reader.info();
        assert_eq!((info.width, info.height), (16, 8));
        let chunk = info
            .utf8_text
            .iter()
            .find(|c| c.keyword == "AIGC")
            .expect("AIGC chunk");
        assert_eq!(chunk.get_text().expect("text"), record.to_json());
    }

    #[test]
    fn jpeg_carries_xmp_and_respects_the_budget() {
        let record = AigcRecord::new("huabi", "job-9");
        let picture = noisy(256, 256);
        let bytes = jpeg(&picture, &record, WECHAT_JPEG_BUDGET).expect("jpeg");
        assert_eq!(&bytes[..2], &[0xFF, 0xD8]);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("http://www.tc260.org.cn/ns/AIGC/1.0/"));
        assert!(
            text.contains("&quot;ProduceID&quot;:&quot;job-9&quot;"),
            "record escaped inside XMP"
        );
        let generous = bytes.len();
        let tight = jpeg(&picture, &record, generous - 1).expect("a lower quality fits");
        assert!(tight.len() < generous);
        assert!(matches!(
            jpeg(&picture, &record, 1000),
            Err(EncodeError::TooLarge { .. })
        ));
    }
}
