//! WeChat message encryption (compatible and safe mode): AES-256-CBC with IV = key[..16], PKCS#7 padding to
//! 32-byte blocks, plaintext = 16 random bytes ‖ u32 big-endian length ‖ message ‖ AppID.

use aes::Aes256;
use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use subtle::ConstantTimeEq;

/// WeChat pads to this block size (not AES's 16).
const PAD_BLOCK: usize = 32;
/// Length of the random prefix.
const RANDOM_LEN: usize = 16;

/// Tencent's encoders emit keys whose last character carries non-zero trailing bits, so decoding must allow them.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a message could not be encrypted or decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The EncodingAESKey is not 43 base64 characters decoding to 32 bytes.
    #[error("EncodingAESKey must be 43 base64 characters that decode to 32 bytes")]
    BadKey,
    /// The `Encrypt` value is not base64.
    #[error("ciphertext is not base64")]
    NotBase64,
    /// The ciphertext length is not a positive multiple of the AES block.
    #[error("ciphertext length {0} is not a positive multiple of 16")]
    BadLength(usize),
    /// The PKCS#7 padding is invalid (wrong key or tampered ciphertext).
    #[error("invalid padding")]
    BadPadding,
    /// The declared message length does not fit the plaintext.
    #[error("declared message length does not fit the plaintext")]
    BadMessageLength,
    /// The AppID inside the message is not ours.
    #[error("AppID inside the message does not match")]
    AppIdMismatch,
}

/// A decoded 32-byte AES key.
#[derive(Clone)]
pub struct AesKey([u8; 32]);

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesKey(***)")
    }
}

impl AesKey {
    /// Decodes the 43-character EncodingAESKey from the WeChat console.
    pub fn from_encoding_key(encoding_key: &str) -> Result<Self, CryptoError> {
        if encoding_key.len() != 43 || !encoding_key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(CryptoError::BadKey);
        }
        let bytes = LENIENT_BASE64
            .decode(format!("{encoding_key}="))
            .map_err(|_| CryptoError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadKey)?;
        Ok(Self(key))
    }

    /// The raw key bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn iv(&self) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&self.0[..16]);
        iv
    }

    /// Decrypts a base64 `Encrypt` value and checks that the trailing id equals `app_id`; returns the message.
    pub fn decrypt(&self, encrypt_b64: &str, app_id: &str) -> Result<Vec<u8>, CryptoError> {
        let mut buf = LENIENT_BASE64
            .decode(encrypt_b64.trim())
            .map_err(|_| CryptoError::NotBase64)?;
        if buf.is_empty() || buf.len() % 16 != 0 {
            return Err(CryptoError::BadLength(buf.len()));
        }
        let len = buf.len();
        let plain = cbc::Decryptor::<Aes256>::new(&self.0.into(), &self.iv().into())
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .map_err(|_| CryptoError::BadLength(len))?;
        let unpadded = strip_pkcs7(plain)?;
        if unpadded.len() < RANDOM_LEN + 4 {
            return Err(CryptoError::BadMessageLength);
        }
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(&unpadded[RANDOM_LEN..RANDOM_LEN + 4]);
        let msg_len = u32::from_be_bytes(len_bytes) as usize;
        let body = &unpadded[RANDOM_LEN + 4..];
        if msg_len > body.len() {
            return Err(CryptoError::BadMessageLength);
        }
        let (message, received_id) = body.split_at(msg_len);
        let matches =
            received_id.len() == app_id.len() && bool::from(received_id.ct_eq(app_id.as_bytes()));
        if !matches {
            return Err(CryptoError::AppIdMismatch);
        }
        Ok(message.to_vec())
    }

    /// Encrypts `message` for `app_id` with the given 16-byte random prefix; returns the base64 `Encrypt` value.
    pub fn encrypt_with_random(&self, message: &[u8], app_id: &str, random: &[u8; 16]) -> String {
        let mut plain =
            Vec::with_capacity(RANDOM_LEN + 4 + message.len() + app_id.len() + PAD_BLOCK);
        plain.extend_from_slice(random);
        plain.extend_from_slice(&(message.len() as u32).to_be_bytes());
        plain.extend_from_slice(message);
        plain.extend_from_slice(app_id.as_bytes());
        let pad = PAD_BLOCK - plain.len() % PAD_BLOCK;
        plain.extend(std::iter::repeat_n(pad as u8, pad));
        let len = plain.len();
        let cipher = cbc::Encryptor::<Aes256>::new(&self.0.into(), &self.iv().into())
            .encrypt_padded_mut::<NoPadding>(&mut plain, len)
            .expect("the buffer is padded to a multiple of the block size; this is a bug");
        base64::engine::general_purpose::STANDARD.encode(cipher)
    }

    /// Encrypts `message` for `app_id` with a fresh random prefix.
    pub fn encrypt(&self, message: &[u8], app_id: &str) -> String {
        let random: [u8; 16] = rand::random();
        self.encrypt_with_random(message, app_id, &random)
    }
}

/// Removes PKCS#7 padding of 1..=32 bytes, all equal to the pad length.
fn strip_pkcs7(plain: &[u8]) -> Result<&[u8], CryptoError> {
    let pad = *plain.last().ok_or(CryptoError::BadPadding)? as usize;
    if pad == 0 || pad > PAD_BLOCK || pad > plain.len() {
        return Err(CryptoError::BadPadding);
    }
    let (body, padding) = plain.split_at(plain.len() - pad);
    if padding.iter().any(|&b| b as usize != pad) {
        return Err(CryptoError::BadPadding);
    }
    Ok(body)
}

/// Tries each key in order; returns the message and the index of the key that opened it, or the first key's error.
pub fn decrypt_with_any(
    keys: &[AesKey],
    encrypt_b64: &str,
    app_id: &str,
) -> Result<(Vec<u8>, usize), CryptoError> {
    let mut first_error = CryptoError::BadKey;
    for (index, key) in keys.iter().enumerate() {
        match key.decrypt(encrypt_b64, app_id) {
            Ok(message) => return Ok((message, index)),
            Err(e) if index == 0 => first_error = e,
            Err(_) => {}
        }
    }
    Err(first_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    const V1_APPID: &str = "wxba5fad812f8e6fb9";
    const V1_ENCRYPT: &str = "+qdx1OKCy+5JPCBFWw70tm0fJGb2Jmeia4FCB7kao+/Q5c/ohsOzQHi8khUOb05JCpj0JB4RvQMkUyus8TPxLKJGQqcvZqzDpVzazhZv6JsXUnnR8XGT740XgXZUXQ7vJVnAG+tE8NUd4yFyjPy7GgiaviNrlCTj+l5kdfMuFUPpRSrfMZuMcp3Fn2Pede2IuQrKEYwKSqFIZoNqJ4M8EajAsjLY2km32IIjdf8YL/P50F7mStwntrA2cPDrM1kb6mOcfBgRtWygb3VIYnSeOBrebufAlr7F9mFUPAJGj04=";
    const V2_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
    const V2_APPID: &str = "wx5823bf96d3bd56c7";
    const V2_ENCRYPT: &str = "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==";

    #[test]
    fn keys_decode_to_the_documented_bytes() {
        let v1 = AesKey::from_encoding_key(V1_KEY).expect("v1 key");
        assert_eq!(v1.bytes(), &[0u8; 32]);
        let v2 = AesKey::from_encoding_key(V2_KEY).expect("v2 key");
        assert_eq!(
            hex::encode(v2.bytes()),
            "8d69989bbaabe67328014c194631ad0719b3dca035b64023df292447aab60760"
        );
    }

    #[test]
    fn bad_keys_are_refused() {
        for bad in [
            "",
            "short",
            &V1_KEY[..42],
            &format!("{V1_KEY}A"),
            &format!("{}!", &V1_KEY[..42]),
        ] {
            assert_eq!(
                AesKey::from_encoding_key(bad).unwrap_err(),
                CryptoError::BadKey,
                "{bad}"
            );
        }
    }

    #[test]
    fn v1_decrypts_with_appid_check() {
        let key = AesKey::from_encoding_key(V1_KEY).expect("key");
        let msg = key.decrypt(V1_ENCRYPT, V1_APPID).expect("decrypts");
        assert_eq!(
            String::from_utf8(msg).expect("utf8"),
            r#"{"ToUserName":"gh_97417a04a28d","FromUserName":"o9AgO5Kd5ggOC-bXrbNODIiE3bGY","CreateTime":1714112445,"MsgType":"event","Event":"debug_demo","debug_str":"hello world"}"#
        );
        assert_eq!(
            key.decrypt(V1_ENCRYPT, "wx0000000000000000"),
            Err(CryptoError::AppIdMismatch)
        );
        assert_eq!(key.decrypt(V1_ENCRYPT, ""), Err(CryptoError::AppIdMismatch));
    }

    #[test]
    fn v1_reply_encrypts_byte_exact_with_fixed_random() {
        let key = AesKey::from_encoding_key(V1_KEY).expect("key");
        let encrypt = key.encrypt_with_random(
            br#"{"demo_resp":"good luck"}"#,
            V1_APPID,
            b"707722b803182950",
        );
        assert_eq!(
            encrypt,
            "ELGduP2YcVatjqIS+eZbp80MNLoAUWvzzyJxgGzxZO/5sAvd070Bs6qrLARC9nVHm48Y4hyRbtzve1L32tmxSQ=="
        );
        assert_eq!(
            super::super::signature::sign(&["AAAAA", "1713424427", "415670741", &encrypt]),
            "1b9339964ed2e271e7c7b6ff2b0ef902fc94dea1"
        );
    }

    #[test]
    fn v2_decrypts_tencent_sample() {
        let key = AesKey::from_encoding_key(V2_KEY).expect("key");
        let msg =
            String::from_utf8(key.decrypt(V2_ENCRYPT, V2_APPID).expect("decrypts")).expect("utf8");
        assert!(
            msg.starts_with("<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName>"),
            "{msg}"
        );
        assert!(msg.contains("<Content><![CDATA[hello]]></Content>"));
        assert!(msg.contains("<MsgId>4561255354251345929</MsgId>"));
        let echo = "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==";
        assert_eq!(
            key.decrypt(echo, V2_APPID).expect("echostr"),
            b"1616140317555161061"
        );
    }

    #[test]
    fn round_trip_with_multibyte_text() {
        let key = AesKey::from_encoding_key(V2_KEY).expect("key");
        let text = "我是中文abcd123 ]]> 嫦娥抱玉兔".as_bytes();
        let encrypt = key.encrypt(text, V2_APPID);
        assert_eq!(key.decrypt(&encrypt, V2_APPID).expect("round trip"), text);
    }

    #[test]
    fn previous_key_is_tried_when_the_current_fails() {
        let old = AesKey::from_encoding_key(V2_KEY).expect("key");
        let new = AesKey::from_encoding_key(V1_KEY).expect("key");
        let (msg, used) = decrypt_with_any(&[new.clone(), old.clone()], V2_ENCRYPT, V2_APPID)
            .expect("old key opens it");
        assert_eq!(used, 1);
        assert!(msg.starts_with(b"<xml>"));
        assert!(decrypt_with_any(&[new], V2_ENCRYPT, V2_APPID).is_err());
    }

    #[test]
    fn hostile_ciphertexts_are_errors() {
        let key = AesKey::from_encoding_key(V1_KEY).expect("key");
        assert_eq!(key.decrypt("***", V1_APPID), Err(CryptoError::NotBase64));
        assert_eq!(key.decrypt("", V1_APPID), Err(CryptoError::BadLength(0)));
        assert_eq!(
            key.decrypt("AAAA", V1_APPID),
            Err(CryptoError::BadLength(3))
        );
        // Valid padding but a declared length far beyond the plaintext.
        let mut plain = vec![b'r'; 16];
        plain.extend_from_slice(&u32::MAX.to_be_bytes());
        plain.extend_from_slice(&[12u8; 12]);
        let forged = raw_encrypt(&key, &plain);
        assert_eq!(
            key.decrypt(&forged, V1_APPID),
            Err(CryptoError::BadMessageLength)
        );
        // Pad byte 0 and pad byte 33 are both invalid.
        for last in [0u8, 33u8] {
            let mut plain = vec![b'x'; 32];
            plain[31] = last;
            assert_eq!(
                key.decrypt(&raw_encrypt(&key, &plain), V1_APPID),
                Err(CryptoError::BadPadding)
            );
        }
        // Inconsistent padding bytes.
        let mut plain = vec![3u8; 32];
        plain[30] = 2;
        assert_eq!(
            key.decrypt(&raw_encrypt(&key, &plain), V1_APPID),
            Err(CryptoError::BadPadding)
        );
        // Too short for the random prefix and length.
        let mut plain = vec![b'x'; 32];
        plain[16..].fill(16);
        assert_eq!(
            key.decrypt(&raw_encrypt(&key, &plain), V1_APPID),
            Err(CryptoError::BadMessageLength)
        );
    }

    fn raw_encrypt(key: &AesKey, plain: &[u8]) -> String {
        let mut buf = plain.to_vec();
        let len = buf.len();
        let out = cbc::Encryptor::<Aes256>::new(&(*key.bytes()).into(), &key.iv().into())
            .encrypt_padded_mut::<NoPadding>(&mut buf, len)
            .expect("aligned");
        base64::engine::general_purpose::STANDARD.encode(out)
    }
}
