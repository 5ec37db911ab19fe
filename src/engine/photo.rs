//! A follower's photo made ready for img2img: size checked before anything is decoded (a decompression bomb is
//! refused from its header), decoded with allocation limits, turned upright by its EXIF orientation, cropped to the
//! painting's shape around its centre (never stretched) and resized as diffusers resizes (Pillow's Lanczos).

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use super::Picture;
use super::resample::{self, Filter};

/// How large a photo may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhotoLimits {
    /// Most bytes of the file.
    pub max_bytes: usize,
    /// Most pixels (width × height) of the picture it holds.
    pub max_pixels: u64,
}

/// Why a photo cannot be painted from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhotoError {
    /// The file is larger than allowed.
    #[error("the photo has {bytes} bytes; the most is {max}")]
    TooManyBytes {
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The picture has more pixels than allowed (a decompression bomb, or simply too large).
    #[error("the photo is {width}x{height} pixels; the most is {max} pixels")]
    TooManyPixels {
        /// Its width.
        width: u32,
        /// Its height.
        height: u32,
        /// The limit.
        max: u64,
    },
    /// Not a picture huabi reads (JPEG, PNG, GIF, WebP, BMP), or a damaged one.
    #[error("the photo cannot be read: {0}")]
    Unreadable(String),
}

impl PhotoError {
    /// Whether the photo was refused for its size (else it could not be read).
    pub fn is_size(&self) -> bool {
        !matches!(self, PhotoError::Unreadable(_))
    }
}

fn unreadable(e: impl std::fmt::Display) -> PhotoError {
    PhotoError::Unreadable(e.to_string())
}

/// The centred crop of a `width` × `height` picture with the shape of `to_width` × `to_height`: (x, y, w, h).
pub fn centre_crop(
    (width, height): (u32, u32),
    (to_width, to_height): (u32, u32),
) -> (u32, u32, u32, u32) {
    let (w, h, tw, th) = (
        u64::from(width),
        u64::from(height),
        u64::from(to_width.max(1)),
        u64::from(to_height.max(1)),
    );
    if w * th > h * tw {
        let cw = ((h * tw + th / 2) / th).clamp(1, w) as u32;
        ((width - cw) / 2, 0, cw, height)
    } else {
        let ch = ((w * th + tw / 2) / tw).clamp(1, h) as u32;
        (0, (height - ch) / 2, width, ch)
    }
}

/// Decodes `bytes` within `limits`, upright, as 8-bit RGB.
pub fn decode(bytes: &[u8], limits: &PhotoLimits) -> Result<image::RgbImage, PhotoError> {
    if bytes.len() > limits.max_bytes {
        return Err(PhotoError::TooManyBytes {
            bytes: bytes.len(),
            max: limits.max_bytes,
        });
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(unreadable)?;
    match reader.format() {
        Some(
            ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::Gif
            | ImageFormat::WebP
            | ImageFormat::Bmp,
        ) => {}
        Some(other) => return Err(unreadable(format!("{other:?} photos are not accepted"))),
        None => return Err(unreadable("not a JPEG, PNG, GIF, WebP or BMP file")),
    }
    let mut decoder_limits = Limits::default();
    // RGBA at 8 bits, twice over for the decoder's own buffers.
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(unreadable)?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > limits.max_pixels || width == 0 || height == 0 {
        return Err(PhotoError::TooManyPixels {
            width,
            height,
            max: limits.max_pixels,
        });
    }
    let orientation = decoder.orientation().map_err(unreadable)?;
    let mut picture = DynamicImage::from_decoder(decoder).map_err(unreadable)?;
    picture.apply_orientation(orientation);
    Ok(picture.to_rgb8())
}

/// The photo in `bytes` as a `width` × `height` picture: decoded within `limits`, upright, centre-cropped to that
/// shape and resized with Pillow's Lanczos filter.
pub fn prepare(
    bytes: &[u8],
    limits: &PhotoLimits,
    size: (u32, u32),
) -> Result<Picture, PhotoError> {
    let rgb = decode(bytes, limits)?;
    Ok(fit(&rgb, size))
}

/// `rgb` centre-cropped to the shape of `size` and resized to it.
pub fn fit(rgb: &image::RgbImage, (width, height): (u32, u32)) -> Picture {
    let (x, y, w, h) = centre_crop(rgb.dimensions(), (width, height));
    let cropped = image::imageops::crop_imm(rgb, x, y, w, h).to_image();
    let resized = resample::resize(
        cropped.as_raw(),
        (w as usize, h as usize),
        (width as usize, height as usize),
        Filter::Lanczos,
    );
    Picture {
        width,
        height,
        rgb: resized.iter().map(|&v| f32::from(v) / 255.0).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PhotoLimits = PhotoLimits {
        max_bytes: 1 << 20,
        max_pixels: 4096 * 4096,
    };

    fn png(width: u32, height: u32) -> Vec<u8> {
        let picture = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
        });
        let mut out = Cursor::new(Vec::new());
        picture
            .write_to(&mut out, ImageFormat::Png)
            .expect("encodes");
        out.into_inner()
    }

    #[test]
    fn crops_keep_the_centre_and_the_shape() {
        assert_eq!(centre_crop((80, 48), (64, 64)), (16, 0, 48, 48));
        assert_eq!(centre_crop((48, 80), (64, 64)), (0, 16, 48, 48));
        assert_eq!(centre_crop((100, 100), (64, 32)), (0, 25, 100, 50));
        assert_eq!(centre_crop((100, 100), (100, 100)), (0, 0, 100, 100));
        assert_eq!(centre_crop((1, 1000), (512, 512)), (0, 499, 1, 1));
    }

    #[test]
    fn photos_become_pictures_of_the_asked_size() {
        let picture = prepare(&png(80, 48), &LIMITS, (64, 32)).expect("prepares");
        assert_eq!((picture.width, picture.height), (64, 32));
        assert_eq!(picture.rgb.len(), 64 * 32 * 3);
        assert!(picture.rgb.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn oversized_files_and_pictures_are_refused_before_decoding() {
        let file = png(300, 300);
        let small = PhotoLimits {
            max_bytes: 100,
            ..LIMITS
        };
        assert!(matches!(
            prepare(&file, &small, (64, 64)),
            Err(PhotoError::TooManyBytes { .. })
        ));
        let few = PhotoLimits {
            max_pixels: 200 * 200,
            ..LIMITS
        };
        assert!(matches!(
            prepare(&file, &few, (64, 64)),
            Err(PhotoError::TooManyPixels {
                width: 300,
                height: 300,
                ..
            })
        ));
    }

    /// A JPEG of `width` × `height` (left half red, right half blue) carrying EXIF orientation `orientation`.
    fn jpeg_with_orientation(width: u32, height: u32, orientation: u16) -> Vec<u8> {
        let picture = image::RgbImage::from_fn(width, height, |x, _| {
            if x < width / 2 {
                image::Rgb([250, 0, 0])
            } else {
                image::Rgb([0, 0, 250])
            }
        });
        let mut jpeg = Cursor::new(Vec::new());
        picture
            .write_to(&mut jpeg, ImageFormat::Jpeg)
            .expect("jpeg");
        let jpeg = jpeg.into_inner();
        // APP1 "Exif": a big-endian TIFF header and one IFD entry, 0x0112 (Orientation), SHORT, 1 value.
        let mut tiff =
            b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01".to_vec();
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut app1 = b"Exif\x00\x00".to_vec();
        app1.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    #[test]
    fn exif_orientation_turns_photos_upright() {
        let upright = decode(&jpeg_with_orientation(40, 20, 1), &LIMITS).expect("decodes");
        assert_eq!(upright.dimensions(), (40, 20));
        // 6 = the camera was turned: the picture is rotated 90° clockwise to be upright, so red ends on top.
        let turned = decode(&jpeg_with_orientation(40, 20, 6), &LIMITS).expect("decodes");
        assert_eq!(turned.dimensions(), (20, 40));
        assert!(turned.get_pixel(10, 5)[0] > 200 && turned.get_pixel(10, 35)[2] > 200);
    }

    #[test]
    fn garbage_and_truncated_files_are_unreadable() {
        for bytes in [
            b"".to_vec(),
            b"hello".to_vec(),
            b"<svg xmlns='http://www.w3.org/2000/svg'/>".to_vec(),
            png(40, 40)[..60].to_vec(),
        ] {
            let error = prepare(&bytes, &LIMITS, (64, 64)).expect_err("refused");
            assert!(!error.is_size(), "{error}");
        }
    }
}
