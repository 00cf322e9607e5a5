//! How messages are printed: as text when they are printable UTF-8, as hex otherwise, or as one
//! JSON object per line.

use serde::Serialize;

/// The message as text if it is UTF-8 without control characters (tab allowed).
pub fn as_text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes)
        .ok()
        .filter(|s| !s.chars().any(|c| c.is_control() && c != '\t'))
}

/// Lowercase hex, two digits a byte.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Text as is, anything else as `0x` and hex.
pub fn display(bytes: &[u8]) -> String {
    match as_text(bytes) {
        Some(text) => text.to_string(),
        None => format!("0x{}", hex(bytes)),
    }
}

/// A message in JSON: `text` when printable, `hex` otherwise.
#[derive(Serialize)]
pub struct Json {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<Bytes>,
    pub payload: Bytes,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub redelivered: bool,
}

/// Bytes in JSON: `{"text": "..."}` or `{"hex": "..."}`.
#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bytes {
    Text(String),
    Hex(String),
}

impl Bytes {
    pub fn of(bytes: &[u8]) -> Self {
        match as_text(bytes) {
            Some(text) => Bytes::Text(text.to_string()),
            None => Bytes::Hex(hex(bytes)),
        }
    }
}

/// One line for a received message: `topic<TAB>payload` or `payload`, or its JSON.
pub fn line(topic: Option<&[u8]>, payload: &[u8], redelivered: bool, json: bool) -> String {
    if json {
        let msg = Json {
            topic: topic.map(Bytes::of),
            payload: Bytes::of(payload),
            redelivered,
        };
        return serde_json::to_string(&msg).expect("a message always serialises");
    }
    match topic {
        Some(topic) => format!("{}\t{}", display(topic), display(payload)),
        None => display(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_text_is_shown_as_is_and_the_rest_as_hex() {
        assert_eq!(display(b"hello world\tx"), "hello world\tx");
        assert_eq!(display(b"a\nb"), "0x610a62");
        assert_eq!(display(&[0xff, 0x00]), "0xff00");
        assert_eq!(
            line(Some(b"t/1"), &[1, 2], false, true),
            r#"{"topic":{"text":"t/1"},"payload":{"hex":"0102"}}"#
        );
    }
}
