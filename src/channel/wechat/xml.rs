//! WeChat's flat XML: parsing `<xml><Field>value</Field>…</xml>` safely, and building passive replies.

use quick_xml::Reader;
use quick_xml::events::Event as XmlEvent;

/// Most top-level fields a message may carry; real messages have fewer than 20.
const MAX_FIELDS: usize = 64;
/// Deepest nesting accepted (some events carry one level of sub-elements).
const MAX_DEPTH: usize = 4;

/// Why a body is not a WeChat XML document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// The body contains a document type declaration (refused to rule out entity attacks).
    #[error("DOCTYPE is not allowed")]
    Doctype,
    /// The body is not well-formed XML of the expected shape.
    #[error("malformed XML: {0}")]
    Malformed(String),
    /// The body is not UTF-8.
    #[error("body is not UTF-8")]
    NotUtf8,
    /// A field appears twice, which makes the message ambiguous.
    #[error("field {0} appears more than once")]
    DuplicateField(String),
    /// Too many fields or too deep.
    #[error("document too large or too deeply nested")]
    TooComplex,
}

/// The top-level fields of a WeChat XML document, in document order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    /// The value of field `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Parses the root element's direct children into [`Fields`]; nested elements are skipped.
pub fn parse(body: &[u8]) -> Result<Fields, XmlError> {
    let text = std::str::from_utf8(body).map_err(|_| XmlError::NotUtf8)?;
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut fields = Fields::default();
    let mut depth = 0usize;
    let mut current: Option<(String, String)> = None;
    let mut seen_root = false;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| XmlError::Malformed(e.to_string()))?;
        match event {
            XmlEvent::DocType(_) => return Err(XmlError::Doctype),
            XmlEvent::Start(start) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(XmlError::TooComplex);
                }
                if depth == 1 {
                    if seen_root {
                        return Err(XmlError::Malformed("more than one root element".into()));
                    }
                    seen_root = true;
                } else if depth == 2 {
                    let name = std::str::from_utf8(start.name().as_ref())
                        .map_err(|_| XmlError::NotUtf8)?
                        .to_string();
                    current = Some((name, String::new()));
                }
            }
            XmlEvent::Empty(start) => {
                if depth == 0 {
                    return Err(XmlError::Malformed("empty root element".into()));
                }
                if depth == 1 {
                    let name = std::str::from_utf8(start.name().as_ref())
                        .map_err(|_| XmlError::NotUtf8)?
                        .to_string();
                    push_field(&mut fields, name, String::new())?;
                }
            }
            XmlEvent::Text(t) => {
                if depth == 2 {
                    let unescaped = t
                        .xml_content()
                        .map_err(|e| XmlError::Malformed(e.to_string()))?;
                    if let Some((_, value)) = current.as_mut() {
                        value.push_str(&unescaped);
                    }
                } else if depth == 0 && !t.iter().all(u8::is_ascii_whitespace) {
                    return Err(XmlError::Malformed("text outside the root element".into()));
                }
            }
            XmlEvent::CData(c) => {
                if depth == 2 {
                    let raw = std::str::from_utf8(&c).map_err(|_| XmlError::NotUtf8)?;
                    if let Some((_, value)) = current.as_mut() {
                        value.push_str(raw);
                    }
                }
            }
            XmlEvent::GeneralRef(r) => {
                if depth == 2 {
                    let resolved = resolve_reference(&r)?;
                    if let Some((_, value)) = current.as_mut() {
                        value.push(resolved);
                    }
                }
            }
            XmlEvent::End(_) => {
                if depth == 2
                    && let Some((name, value)) = current.take()
                {
                    push_field(&mut fields, name, value)?;
                }
                depth = depth.saturating_sub(1);
            }
            XmlEvent::Eof => break,
            XmlEvent::Decl(_) | XmlEvent::Comment(_) | XmlEvent::PI(_) => {}
        }
    }
    if !seen_root || depth != 0 {
        return Err(XmlError::Malformed(
            "missing or unclosed root element".into(),
        ));
    }
    Ok(fields)
}

/// Resolves the five predefined entities and numeric character references; anything else is refused.
fn resolve_reference(r: &quick_xml::events::BytesRef<'_>) -> Result<char, XmlError> {
    if let Some(c) = r
        .resolve_char_ref()
        .map_err(|e| XmlError::Malformed(e.to_string()))?
    {
        return Ok(c);
    }
    let name = std::str::from_utf8(r).map_err(|_| XmlError::NotUtf8)?;
    match name {
        "lt" => Ok('<'),
        "gt" => Ok('>'),
        "amp" => Ok('&'),
        "apos" => Ok('\''),
        "quot" => Ok('"'),
        other => Err(XmlError::Malformed(format!("unknown entity &{other};"))),
    }
}

fn push_field(fields: &mut Fields, name: String, value: String) -> Result<(), XmlError> {
    if fields.get(&name).is_some() {
        return Err(XmlError::DuplicateField(name));
    }
    if fields.0.len() >= MAX_FIELDS {
        return Err(XmlError::TooComplex);
    }
    fields.0.push((name, value));
    Ok(())
}

/// Wraps `text` in CDATA, splitting any `]]>` so the text cannot close the section early.
pub fn cdata(text: &str) -> String {
    format!("<![CDATA[{}]]>", text.replace("]]>", "]]]]><![CDATA[>"))
}

/// A passive text reply from `account` to `user`.
pub fn text_reply(user: &str, account: &str, created_at: i64, content: &str) -> String {
    format!(
        "<xml><ToUserName>{}</ToUserName><FromUserName>{}</FromUserName><CreateTime>{created_at}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content>{}</Content></xml>",
        cdata(user),
        cdata(account),
        cdata(content)
    )
}

/// A passive image reply (an uploaded `media_id`) from `account` to `user`.
pub fn image_reply(user: &str, account: &str, created_at: i64, media_id: &str) -> String {
    format!(
        "<xml><ToUserName>{}</ToUserName><FromUserName>{}</FromUserName><CreateTime>{created_at}</CreateTime><MsgType><![CDATA[image]]></MsgType><Image><MediaId>{}</MediaId></Image></xml>",
        cdata(user),
        cdata(account),
        cdata(media_id)
    )
}

/// The envelope of an encrypted reply.
pub fn encrypted_envelope(
    encrypt: &str,
    msg_signature: &str,
    timestamp: i64,
    nonce: &str,
) -> String {
    format!(
        "<xml><Encrypt>{}</Encrypt><MsgSignature>{}</MsgSignature><TimeStamp>{timestamp}</TimeStamp><Nonce>{}</Nonce></xml>",
        cdata(encrypt),
        cdata(msg_signature),
        cdata(nonce)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_text_message() {
        let f = parse(b"<xml><ToUserName><![CDATA[toUser]]></ToUserName><FromUserName><![CDATA[fromUser]]></FromUserName>\n<CreateTime>1348831860</CreateTime><MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[this is a test]]></Content><MsgId>1234567890123456</MsgId></xml>").expect("valid");
        assert_eq!(f.get("ToUserName"), Some("toUser"));
        assert_eq!(f.get("FromUserName"), Some("fromUser"));
        assert_eq!(f.get("CreateTime"), Some("1348831860"));
        assert_eq!(f.get("Content"), Some("this is a test"));
        assert_eq!(f.get("MsgId"), Some("1234567890123456"));
        assert_eq!(f.len(), 6);
    }

    #[test]
    fn entities_and_mixed_cdata_are_decoded() {
        let f = parse("<?xml version=\"1.0\"?><xml><Content>a &lt;b&gt; &amp; &#20013;<![CDATA[<x>]]></Content><Empty/></xml>".as_bytes()).expect("valid");
        assert_eq!(f.get("Content"), Some("a <b> & 中<x>"));
        assert_eq!(f.get("Empty"), Some(""));
    }

    #[test]
    fn nested_elements_are_skipped_not_flattened() {
        let f = parse(b"<xml><Event>scancode_push</Event><ScanCodeInfo><ScanType>qrcode</ScanType></ScanCodeInfo></xml>").expect("valid");
        assert_eq!(f.get("Event"), Some("scancode_push"));
        assert_eq!(f.get("ScanType"), None);
    }

    #[test]
    fn doctype_is_refused_in_any_form() {
        for body in [
            "<!DOCTYPE xml [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><xml><Content>&x;</Content></xml>",
            "<?xml version=\"1.0\"?><!DOCTYPE xml><xml/>",
            "<!doctype xml><xml><A>1</A></xml>",
        ] {
            let err = parse(body.as_bytes()).expect_err(body);
            assert!(
                matches!(err, XmlError::Doctype | XmlError::Malformed(_)),
                "{body}: {err:?}"
            );
        }
        assert_eq!(parse(b"<!DOCTYPE xml><xml/>"), Err(XmlError::Doctype));
    }

    #[test]
    fn unknown_entities_are_refused() {
        assert!(matches!(
            parse(b"<xml><Content>&xxe;</Content></xml>"),
            Err(XmlError::Malformed(_))
        ));
    }

    #[test]
    fn malformed_documents_are_refused() {
        for body in [
            &b""[..],
            b"   ",
            b"not xml",
            b"<xml>",
            b"<xml><A>1</B></xml>",
            b"<xml><A>1</A></xml><xml/>",
            b"<xml><A>1</A></xml>trailing",
            b"<xml/>",
            b"\xff\xfe<xml/>",
        ] {
            assert!(parse(body).is_err(), "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn duplicate_and_excessive_fields_are_refused() {
        assert_eq!(
            parse(b"<xml><FromUserName>a</FromUserName><FromUserName>b</FromUserName></xml>"),
            Err(XmlError::DuplicateField("FromUserName".into()))
        );
        let many: String = (0..100).map(|i| format!("<F{i}>x</F{i}>")).collect();
        assert_eq!(
            parse(format!("<xml>{many}</xml>").as_bytes()),
            Err(XmlError::TooComplex)
        );
        let deep = format!("<xml>{}{}</xml>", "<a>".repeat(50), "</a>".repeat(50));
        assert_eq!(parse(deep.as_bytes()), Err(XmlError::TooComplex));
    }

    #[test]
    fn cdata_escapes_the_terminator() {
        let reply = text_reply("u", "gh", 1, "evil ]]><Content>x</Content> end");
        let f = parse(reply.as_bytes()).expect("the reply is well-formed");
        assert_eq!(f.get("Content"), Some("evil ]]><Content>x</Content> end"));
        assert_eq!(f.get("MsgType"), Some("text"));
        assert_eq!(
            cdata("]]>]]>"),
            "<![CDATA[]]]]><![CDATA[>]]]]><![CDATA[>]]>"
        );
    }

    #[test]
    fn image_reply_has_media_id() {
        let reply = image_reply("u", "gh", 5, "MEDIA");
        assert!(reply.contains("<Image><MediaId><![CDATA[MEDIA]]></MediaId></Image>"));
        assert_eq!(
            parse(reply.as_bytes()).expect("valid").get("MsgType"),
            Some("image")
        );
    }
}
