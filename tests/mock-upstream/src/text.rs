//! Deterministic content: text extraction from request messages, word
//! counts (our "tokens"), the reply text and embedding vectors.

use std::fmt::Write;

use serde::Serialize;
use serde_json::Value;

use crate::ids::splitmix64;

/// Calls `f` with every piece of text inside a message `content` value:
/// a plain string, or an array of parts / blocks where each part is a
/// string, has a `text` string (`text`, `input_text`, `output_text`), or has
/// a nested `content` (Anthropic `tool_result`).
pub(crate) fn for_each_text<'a>(content: &'a Value, f: &mut impl FnMut(&'a str)) {
    match content {
        Value::String(s) => f(s),
        Value::Array(parts) => {
            for part in parts {
                for_each_text(part, f);
            }
        }
        Value::Object(obj) => {
            if let Some(Value::String(s)) = obj.get("text") {
                f(s);
            } else if let Some(inner) = obj.get("content") {
                for_each_text(inner, f);
            }
        }
        _ => {}
    }
}

/// The text of a content value, parts joined by single spaces.
pub(crate) fn join_text(content: &Value) -> String {
    let mut out = String::new();
    for_each_text(content, &mut |s| {
        if !out.is_empty() && !s.is_empty() {
            out.push(' ');
        }
        out.push_str(s);
    });
    out
}

/// Whitespace-separated words in a content value.
pub(crate) fn count_words(content: &Value) -> usize {
    let mut n = 0;
    for_each_text(content, &mut |s| n += s.split_whitespace().count());
    n
}

/// Words in a plain string.
pub(crate) fn words_in(s: &str) -> usize {
    s.split_whitespace().count()
}

/// The assistant reply: `Hello from <model>! You said: <user text>`, or
/// `w1 w2 … wn` for the `words:<n>` scenario.
pub(crate) fn reply_text(model: &str, user_text: &str, words: Option<usize>) -> String {
    match words {
        Some(n) => {
            let mut out = String::with_capacity(n * 7);
            for i in 1..=n {
                if i > 1 {
                    out.push(' ');
                }
                // Writing to a String cannot fail.
                let _ = write!(out, "w{i}");
            }
            out
        }
        None => format!("Hello from {model}! You said: {user_text}"),
    }
}

/// Splits a reply into stream pieces: each word with the space after it,
/// so the pieces concatenate to exactly `text`.
pub(crate) fn stream_pieces(text: &str) -> impl Iterator<Item = &str> {
    text.split_inclusive(' ')
}

/// `{"echo":"<text>"}`, the arguments of every mock tool call.
pub(crate) fn echo_arguments(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 12);
    out.push_str("{\"echo\":");
    out.push_str(&json_string(text));
    out.push('}');
    out
}

/// The three pieces tool-call arguments are streamed in.
pub(crate) fn argument_pieces(args: &str) -> Vec<&str> {
    // `{"echo":` / `"<text>"` / `}` for our own arguments; any other string
    // is split in three at char boundaries.
    if let Some(middle) = args
        .strip_prefix("{\"echo\":")
        .and_then(|rest| rest.strip_suffix('}'))
    {
        return vec!["{\"echo\":", middle, "}"];
    }
    let mut cuts = vec![0];
    for k in 1..3 {
        let mut i = args.len() * k / 3;
        while !args.is_char_boundary(i) {
            i += 1;
        }
        cuts.push(i);
    }
    cuts.push(args.len());
    cuts.windows(2)
        .map(|w| &args[w[0]..w[1]])
        .filter(|p| !p.is_empty())
        .collect()
}

/// A JSON string literal (quoted and escaped).
pub(crate) fn json_string(s: &str) -> String {
    let mut buf = Vec::with_capacity(s.len() + 2);
    write_json(&mut buf, s);
    // serde_json only writes valid UTF-8.
    String::from_utf8(buf).unwrap_or_default()
}

/// Appends the JSON encoding of `value` to `buf`.
pub(crate) fn write_json<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) {
    // serde_json fails only on writer errors (a Vec<u8> never fails) or on
    // maps with non-string keys, which none of our types have; nothing to do.
    let _ = serde_json::to_writer(buf, value);
}

/// The JSON encoding of `value`.
pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    write_json(&mut buf, value);
    buf
}

/// A deterministic unit-length embedding of `text` with `dims` dimensions.
pub(crate) fn embedding(text: &str, dims: usize) -> Vec<f32> {
    // FNV-1a over the text seeds a SplitMix64 sequence.
    let mut seed: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        seed ^= u64::from(b);
        seed = seed.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut v: Vec<f64> = (0..dims as u64)
        .map(|i| {
            let r = splitmix64(seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            (r >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        for x in &mut v {
            *x /= norm;
        }
    }
    v.into_iter().map(|x| x as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn extracts_text_parts() {
        let c = json!([{"type":"text","text":"Hello"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"there  world"}]);
        assert_eq!(join_text(&c), "Hello there  world");
        assert_eq!(count_words(&c), 3);
        let tr = json!([{"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":"42 degrees"}]}]);
        assert_eq!(join_text(&tr), "42 degrees");
        assert_eq!(join_text(&json!("plain")), "plain");
    }

    #[test]
    fn reply_and_pieces() {
        let r = reply_text("gpt-x", "hi there", None);
        assert_eq!(r, "Hello from gpt-x! You said: hi there");
        let pieces: Vec<_> = stream_pieces(&r).collect();
        assert_eq!(pieces.len(), 7);
        assert_eq!(pieces[0], "Hello ");
        assert_eq!(pieces.concat(), r);
        assert_eq!(reply_text("m", "x", Some(3)), "w1 w2 w3");
    }

    #[test]
    fn tool_arguments() {
        let a = echo_arguments("say \"hi\"");
        assert_eq!(a, r#"{"echo":"say \"hi\""}"#);
        assert_eq!(argument_pieces(&a).concat(), a);
        assert_eq!(argument_pieces(&a).len(), 3);
        let other = "ééééé";
        assert_eq!(argument_pieces(other).concat(), other);
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding("hello", 8);
        assert_eq!(a, embedding("hello", 8));
        assert_ne!(a, embedding("hellp", 8));
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5);
        assert_eq!(embedding("x", 3).len(), 3);
    }
}
