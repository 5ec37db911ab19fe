//! Reading and writing float32 `.npy` files (for `--init-latents` and reference data).

use std::path::Path;

/// Why a `.npy` file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NpyError {
    /// Not an `.npy` file.
    #[error("not an .npy file (bad magic or header)")]
    NotNpy,
    /// A dtype or layout other than little-endian float32 in C order.
    #[error("unsupported .npy layout: {0} (need little-endian float32, C order)")]
    Unsupported(String),
    /// The data is shorter or longer than the shape says.
    #[error("data length does not match shape {0:?}")]
    Length(Vec<usize>),
    /// The file could not be read or written.
    #[error("{0}")]
    Io(String),
}

const MAGIC: &[u8] = b"\x93NUMPY";
/// Header limit: a hostile file cannot make us read a huge header.
const MAX_HEADER: usize = 64 * 1024;

/// Parses a little-endian float32 C-order array; returns shape and data.
pub fn parse_f32(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>), NpyError> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(NpyError::NotNpy);
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(NpyError::NotNpy),
    };
    if header_len > MAX_HEADER || start + header_len > bytes.len() {
        return Err(NpyError::NotNpy);
    }
    let header =
        std::str::from_utf8(&bytes[start..start + header_len]).map_err(|_| NpyError::NotNpy)?;
    let descr = dict_value(header, "descr").ok_or(NpyError::NotNpy)?;
    if !matches!(descr.trim_matches(|c| c == '\'' || c == '"'), "<f4" | "=f4") {
        return Err(NpyError::Unsupported(format!("dtype {descr}")));
    }
    if dict_value(header, "fortran_order").map(str::trim) != Some("False") {
        return Err(NpyError::Unsupported("fortran_order".into()));
    }
    let shape_text = dict_value(header, "shape").ok_or(NpyError::NotNpy)?;
    let shape: Vec<usize> = shape_text
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| NpyError::NotNpy))
        .collect::<Result<_, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| NpyError::Length(shape.clone()))?;
    let data = &bytes[start + header_len..];
    if Some(data.len()) != count.checked_mul(4) {
        return Err(NpyError::Length(shape));
    }
    let values = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((shape, values))
}

/// The text after `'key':` up to the next top-level comma or closing brace.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

/// Reads a float32 `.npy` file.
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>), NpyError> {
    let bytes =
        std::fs::read(path).map_err(|e| NpyError::Io(format!("{}: {e}", path.display())))?;
    parse_f32(&bytes)
}

/// Encodes a float32 array as `.npy` (version 1).
pub fn encode_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_numpy_written_file() {
        let bytes = encode_f32(
            &[1, 4, 2, 2],
            &(0..16).map(|i| i as f32 * 0.5).collect::<Vec<_>>(),
        );
        let (shape, data) = parse_f32(&bytes).expect("parses");
        assert_eq!(shape, vec![1, 4, 2, 2]);
        assert_eq!(data[3], 1.5);
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/diffusers/init-latents.npy"
        );
        let (shape, data) = read_f32(Path::new(path)).expect("numpy's own file");
        assert_eq!(shape, vec![1, 4, 8, 8]);
        assert_eq!(data.len(), 256);
    }

    #[test]
    fn hostile_files_are_errors() {
        assert_eq!(parse_f32(b""), Err(NpyError::NotNpy));
        assert_eq!(
            parse_f32(b"\x93NUMPY\x01\x00\xff\xff"),
            Err(NpyError::NotNpy)
        );
        let good = encode_f32(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        assert!(matches!(
            parse_f32(&good[..good.len() - 1]),
            Err(NpyError::Length(_))
        ));
        // Edits inside the header only (after the 10-byte preamble), keeping the data.
        let header_end = 10 + u16::from_le_bytes([good[8], good[9]]) as usize;
        let edit = |from: &str, to: &str| {
            let header = String::from_utf8(good[10..header_end].to_vec()).expect("ascii header");
            let edited = format!("{}\n", header.trim_end().replacen(from, to, 1));
            let mut out = good[..10].to_vec();
            out[8..10].copy_from_slice(&(edited.len() as u16).to_le_bytes());
            out.extend_from_slice(edited.as_bytes());
            out.extend_from_slice(&good[header_end..]);
            out
        };
        assert!(matches!(
            parse_f32(&edit("<f4", "<f8")),
            Err(NpyError::Unsupported(_))
        ));
        assert!(matches!(
            parse_f32(&edit("False", "True")),
            Err(NpyError::Unsupported(_))
        ));
        assert!(matches!(
            parse_f32(&edit("(2, 2)", "(99999999999, 99999999999)")),
            Err(NpyError::Length(_))
        ));
    }
}
