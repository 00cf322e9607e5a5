//! The mapping between shmq topics (any bytes) and NATS subjects (dot-separated tokens).
//!
//! A topic is split at every `/` into segments; each segment becomes one subject token, and the
//! tokens follow the bridge's subject prefix:
//!
//! | topic bytes | subject (prefix `site`) |
//! |---|---|
//! | `hosts/web-3` | `site.hosts.web-3` |
//! | `hosts/` | `site.hosts.%` |
//! | `a.b c` | `site.a%2Eb%20c` |
//! | (empty) | `site.%` |
//!
//! Within a segment the bytes `A–Z a–z 0–9 - _` stand for themselves; every other byte
//! (including `.`, `*`, `>`, `%`, space, control and non-ASCII bytes) is written `%XX`, two
//! upper-case hex digits. An empty segment is the token `%` alone, which no escape produces.
//! So every subject token is non-empty and free of NATS's separators and wildcards, and the
//! mapping is a bijection: [`topic_of`] undoes [`subject_for`] for every byte string, and
//! rejects subjects no topic maps to (lower-case hex, `%` followed by other than two hex
//! digits, an escape of a byte that stands for itself).
//!
//! A topic *prefix* (what shmq subscribers filter by) maps to a wildcard subscription through
//! [`subscription_for`]: its complete segments become literal tokens, the rest becomes `>`
//! (`hosts/web` → `site.hosts.>`), and the last, partial segment is checked on the decoded topic.

use std::fmt::Write as _;

/// Whether `b` stands for itself inside a subject token.
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Checks a subject prefix: one or more non-empty tokens of printable ASCII without wildcards.
///
/// # Errors
/// A sentence saying what is wrong with `prefix`.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("the subject prefix is empty".into());
    }
    for token in prefix.split('.') {
        if token.is_empty() {
            return Err(format!("subject prefix {prefix:?} has an empty token"));
        }
        if token == "*" || token == ">" || token.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(format!(
                "subject prefix {prefix:?} may hold only printable ASCII tokens without wildcards"
            ));
        }
    }
    Ok(())
}

/// Appends the token for one topic segment.
fn push_token(out: &mut String, segment: &[u8]) {
    if segment.is_empty() {
        out.push('%');
        return;
    }
    for &b in segment {
        if is_plain(b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// The subject a message on `topic` is published to, under `prefix` (checked with
/// [`check_prefix`]).
pub fn subject_for(prefix: &str, topic: &[u8]) -> String {
    let mut out = String::with_capacity(prefix.len() + 1 + topic.len() * 3 / 2 + 2);
    out.push_str(prefix);
    for segment in topic.split(|&b| b == b'/') {
        out.push('.');
        push_token(&mut out, segment);
    }
    out
}

/// The value of one upper-case hex digit.
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes one token into `out`; `None` if no segment maps to it.
fn decode_token(token: &[u8], out: &mut Vec<u8>) -> Option<()> {
    if token == b"%" {
        return Some(());
    }
    if token.is_empty() {
        return None;
    }
    let mut i = 0;
    while i < token.len() {
        let b = token[i];
        if is_plain(b) {
            out.push(b);
            i += 1;
        } else if b == b'%' {
            let hi = hex_digit(*token.get(i + 1)?)?;
            let lo = hex_digit(*token.get(i + 2)?)?;
            let byte = hi << 4 | lo;
            if is_plain(byte) {
                return None; // would have been written as itself
            }
            out.push(byte);
            i += 3;
        } else {
            return None;
        }
    }
    Some(())
}

/// The topic a subject under `prefix` stands for, or `None` if the subject is not under
/// `prefix` or is not the image of any topic.
pub fn topic_of(prefix: &str, subject: &str) -> Option<Vec<u8>> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let mut topic = Vec::with_capacity(rest.len());
    for (n, token) in rest.split('.').enumerate() {
        if n > 0 {
            topic.push(b'/');
        }
        decode_token(token.as_bytes(), &mut topic)?;
    }
    Some(topic)
}

/// The NATS subscription that receives every subject whose topic starts with `topic_prefix`
/// (and possibly more: check [`topic_of`]'s result with `starts_with`).
pub fn subscription_for(prefix: &str, topic_prefix: &[u8]) -> String {
    let mut out = String::from(prefix);
    let mut segments: Vec<&[u8]> = topic_prefix.split(|&b| b == b'/').collect();
    segments.pop(); // the last segment is partial (or empty): matched by `>`
    for segment in segments {
        out.push('.');
        push_token(&mut out, segment);
    }
    out.push_str(".>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), so the round-trip test needs no dependency.
    fn bytes(seed: &mut u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                // Favour the interesting bytes: separators, escapes, plain letters.
                match *seed % 8 {
                    0 => b'/',
                    1 => b'.',
                    2 => b'%',
                    3 => b'a',
                    _ => (*seed >> 8) as u8,
                }
            })
            .collect()
    }

    #[test]
    fn examples_from_the_module_docs() {
        assert_eq!(subject_for("site", b"hosts/web-3"), "site.hosts.web-3");
        assert_eq!(subject_for("site", b"hosts/"), "site.hosts.%");
        assert_eq!(subject_for("site", b"a.b c"), "site.a%2Eb%20c");
        assert_eq!(subject_for("site", b""), "site.%");
        assert_eq!(subscription_for("site", b"hosts/web"), "site.hosts.>");
        assert_eq!(subscription_for("site", b""), "site.>");
    }

    #[test]
    fn every_topic_round_trips_and_subjects_are_valid_nats_tokens() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for len in 0..400 {
            let topic = bytes(&mut seed, len % 40);
            let subject = subject_for("p.q", &topic);
            for token in subject.split('.') {
                assert!(!token.is_empty(), "{subject}");
                assert!(token != "*" && token != ">", "{subject}");
                assert!(token.bytes().all(|b| b.is_ascii_graphic()), "{subject}");
            }
            assert_eq!(topic_of("p.q", &subject), Some(topic));
        }
    }

    #[test]
    fn subjects_no_topic_maps_to_are_rejected() {
        for bad in [
            "p.a%2e", "p.a%4", "p.a%", "p.%41", "p.a..b", "p.", "p", "q.a", "p.a%ZZ",
        ] {
            assert_eq!(topic_of("p", bad), None, "{bad}");
        }
    }

    #[test]
    fn a_subscription_covers_exactly_the_topics_under_its_prefix() {
        let sub = subscription_for("p", b"hosts/we");
        assert_eq!(sub, "p.hosts.>");
        let under = subject_for("p", b"hosts/web-3/cpu");
        assert!(under.starts_with(sub.trim_end_matches('>')));
        let topic = topic_of("p", &under).unwrap();
        assert!(topic.starts_with(b"hosts/we"));
    }

    #[test]
    fn prefixes_with_wildcards_or_empty_tokens_are_refused() {
        assert!(check_prefix("site.events").is_ok());
        for bad in ["", "a..b", "a.*", "a.>", "a b", ".a"] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }
}
