//! [`Json`]: a value as the relay keeps it, the canonical JSON text of a `serde_json::Value`.
//!
//! Every value the relay stores, relays or persists is written out far more often than it is
//! looked into: once into the ledger, once per protocol version to the room's members, into every
//! snapshot and digest, while only the HTTP API and a few checks ever need its structure. So a
//! value is kept as the text `serde_json` writes for it (compact, object keys in their order,
//! strings escaped as `serde_json` escapes them, numbers as it prints them), made once where the
//! value enters, and copied as bytes everywhere after.
//!
//! The text is *canonical*: two values make the same text exactly when they are the same
//! `Value` with their keys in the same order, so comparing, hashing or writing the text is
//! comparing, hashing or writing the value as the relay did when it kept a `Value`. Text read
//! from a ledger or a snapshot is taken as it is only when [`Json::canonical`] proves it is what
//! `serde_json` would write for it; anything else is parsed and written out again.

use std::{fmt, sync::Arc};

use serde::{Serialize, Serializer};
use serde_json::{Value, value::RawValue};

/// Deepest nesting [`Json::canonical`] follows (further, it leaves the text to a parse, which
/// has its own limit).
const MAX_DEPTH: usize = 64;
/// Most keys of the objects open at once whose uniqueness [`Json::canonical`] checks (further,
/// it leaves the text to a parse).
const MAX_KEYS: usize = 64;

/// The canonical JSON text of a value (see the module's notes). Cheap to clone (shared).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Json(Arc<str>);

impl Json {
    /// `null`.
    pub fn null() -> Json {
        static NULL: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("null"));
        Json(Arc::clone(&NULL))
    }

    /// The text of `value`.
    pub fn from_value(value: &Value) -> Json {
        // A Value always serializes (no I/O, string keys only).
        Json(Arc::from(serde_json::to_string(value).unwrap_or_else(|_| String::from("null"))))
    }

    /// The value `text` holds, as canonical text: `text` itself when it is canonical already,
    /// otherwise parsed and written out again.
    ///
    /// # Errors
    /// When `text` is not one JSON value (or nests deeper than `serde_json` reads).
    pub fn parse(text: &str) -> Result<Json, serde_json::Error> {
        match Json::canonical(text) {
            Some(json) => Ok(json),
            None => serde_json::from_str::<Value>(text).map(|value| Json::from_value(&value)),
        }
    }

    /// `text` when it is exactly what `serde_json` writes for the value it holds, else `None`.
    pub fn canonical(text: &str) -> Option<Json> {
        is_canonical(text).then(|| Json(Arc::from(text)))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text's length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: the shortest JSON text is one byte long.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How deep arrays and objects nest in it (0 for a scalar), as the value's own structure.
    pub fn depth(&self) -> usize {
        depth(&self.0)
    }

    /// The value, parsed.
    pub fn to_value(&self) -> Value {
        // Canonical text parses, except a value built deeper than serde_json reads (which no
        // client, ledger or peer can send); that one reads as null.
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }

    /// Are the two the same value? True for the same text, and for objects whose keys differ only
    /// in their order (equal as `Value`s, different as text).
    pub fn same_value(&self, other: &Json) -> bool {
        same_value(&self.0, &other.0)
    }

    /// Canonical `text` made elsewhere (by [`Json::canonical`] or a write of a parsed value),
    /// taken without a second check.
    pub(crate) fn trusted(text: &str) -> Json {
        debug_assert!(
            is_canonical(text) || Json::parse(text).is_ok_and(|json| json.as_str() == text),
            "canonical: {text}"
        );
        Json(Arc::from(text))
    }
}

impl From<Value> for Json {
    fn from(value: Value) -> Json {
        Json::from_value(&value)
    }
}

impl From<&Value> for Json {
    fn from(value: &Value) -> Json {
        Json::from_value(value)
    }
}

impl PartialEq<Value> for Json {
    fn eq(&self, other: &Value) -> bool {
        self.to_value() == *other
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Json {
    /// Written as it is (into `serde_json`, verbatim).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match serde_json::from_str::<&RawValue>(&self.0) {
            Ok(raw) => raw.serialize(serializer),
            Err(_) => serializer.serialize_unit(),
        }
    }
}

/// How deep arrays and objects nest in the JSON `text` (0 for a scalar): the most brackets open
/// at once outside strings.
pub fn depth(text: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &byte in text.as_bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Do two canonical texts hold the same value? True for the same text, and for objects whose
/// keys differ only in their order (equal as `Value`s, different as text).
pub fn same_value(a: &str, b: &str) -> bool {
    let parsed = |text: &str| serde_json::from_str::<Value>(text).ok();
    a == b || (a.contains('{') && b.contains('{') && parsed(a).is_some_and(|a| parsed(b) == Some(a)))
}

/// Is `text` exactly what `serde_json` writes for the value it holds?
///
/// It must be one JSON value with no whitespace outside strings; strings escaped only as
/// `serde_json` escapes (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, and `\u00xx` in lower case for
/// the other control characters); integers without a leading zero or `-0`, within `u64` (or
/// `i64` when negative); other numbers exactly as `serde_json` prints the `f64` they parse to;
/// no key twice in one object. Conservative: some canonical texts (nesting deeper than
/// [`MAX_DEPTH`], more than [`MAX_KEYS`] keys open at once) are refused, and are parsed instead.
pub fn is_canonical(text: &str) -> bool {
    let mut checker = Checker { bytes: text.as_bytes(), at: 0, keys: [(0, 0); MAX_KEYS], open: 0 };
    checker.value(0) && checker.at == text.len()
}

/// A one-pass reader of canonical text.
struct Checker<'a> {
    bytes: &'a [u8],
    at: usize,
    /// The spans of the keys of the objects open, innermost last.
    keys: [(usize, usize); MAX_KEYS],
    open: usize,
}

impl Checker<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let ate = self.peek() == Some(byte);
        self.at += usize::from(ate);
        ate
    }

    fn word(&mut self, word: &[u8]) -> bool {
        let ate = self.bytes[self.at..].starts_with(word);
        self.at += if ate { word.len() } else { 0 };
        ate
    }

    fn value(&mut self, depth: usize) -> bool {
        match self.peek() {
            Some(b'"') => self.string(),
            Some(b'{') if depth < MAX_DEPTH => self.object(depth + 1),
            Some(b'[') if depth < MAX_DEPTH => self.array(depth + 1),
            Some(b't') => self.word(b"true"),
            Some(b'f') => self.word(b"false"),
            Some(b'n') => self.word(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => false,
        }
    }

    fn array(&mut self, depth: usize) -> bool {
        self.at += 1;
        if self.eat(b']') {
            return true;
        }
        loop {
            if !self.value(depth) {
                return false;
            }
            if self.eat(b']') {
                return true;
            }
            if !self.eat(b',') {
                return false;
            }
        }
    }

    fn object(&mut self, depth: usize) -> bool {
        self.at += 1;
        if self.eat(b'}') {
            return true;
        }
        let first = self.open;
        let ok = loop {
            let start = self.at;
            if self.peek() != Some(b'"') || !self.string() {
                break false;
            }
            let key = &self.bytes[start..self.at];
            let seen = self.keys[first..self.open].iter().any(|&(from, to)| &self.bytes[from..to] == key);
            if seen || self.open == MAX_KEYS {
                break false;
            }
            self.keys[self.open] = (start, self.at);
            self.open += 1;
            if !self.eat(b':') || !self.value(depth) {
                break false;
            }
            if self.eat(b'}') {
                break true;
            }
            if !self.eat(b',') {
                break false;
            }
        };
        self.open = first;
        ok
    }

    /// A string, from its opening quote to past its closing one.
    fn string(&mut self) -> bool {
        self.at += 1;
        loop {
            let rest = &self.bytes[self.at..];
            let Some(stop) = rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20) else { return false };
            self.at += stop;
            match rest[stop] {
                b'"' => {
                    self.at += 1;
                    return true;
                }
                b'\\' => {
                    let escaped = match rest.get(stop + 1) {
                        Some(b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't') => 2,
                        Some(b'u') => match rest.get(stop + 2..stop + 6) {
                            // serde_json's own form: the control characters without a short one.
                            Some([b'0', b'0', high @ (b'0' | b'1'), low @ (b'0'..=b'9' | b'a'..=b'f')])
                                if !matches!((high, low), (b'0', b'8' | b'9' | b'a' | b'c' | b'd')) =>
                            {
                                6
                            }
                            _ => return false,
                        },
                        _ => return false,
                    };
                    self.at += escaped;
                }
                // A raw control character: not JSON.
                _ => return false,
            }
        }
    }

    fn number(&mut self) -> bool {
        let start = self.at;
        let negative = self.eat(b'-');
        let digits = self.digits();
        if digits == 0 || (digits > 1 && self.bytes[self.at - digits] == b'0') {
            return false;
        }
        let fraction = self.eat(b'.');
        if fraction && self.digits() == 0 {
            return false;
        }
        let exponent = matches!(self.peek(), Some(b'e' | b'E'));
        if exponent {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return false;
            }
        }
        // The grammar held, so the text is ASCII.
        let text = std::str::from_utf8(&self.bytes[start..self.at]).unwrap_or_default();
        if !fraction && !exponent {
            let fits = if negative { text.parse::<i64>().is_ok_and(|n| n < 0) } else { text.parse::<u64>().is_ok() };
            if fits {
                return true;
            }
        }
        // Anything else is an f64, which serde_json prints its own way: the text must be that.
        let Ok(float) = text.parse::<f64>() else { return false };
        let mut printed = [0u8; 32];
        let mut out = &mut printed[..];
        if !float.is_finite() || serde_json::to_writer(&mut out, &float).is_err() {
            return false;
        }
        let len = 32 - out.len();
        printed[..len] == *text.as_bytes()
    }

    /// Skips ASCII digits; how many.
    fn digits(&mut self) -> usize {
        let count = self.bytes[self.at..].iter().take_while(|b| b.is_ascii_digit()).count();
        self.at += count;
        count
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// What a parse and a write give, if `text` parses.
    fn rewritten(text: &str) -> Option<String> {
        serde_json::from_str::<Value>(text).ok().map(|value| value.to_string())
    }

    #[test]
    fn canonical_texts_are_what_serde_json_writes() {
        for text in [
            "null",
            "true",
            "false",
            "0",
            "-1",
            "18446744073709551615",
            "-9223372036854775808",
            "1.5",
            "-0.0",
            "1e+20",
            "1.0",
            "0.1",
            r#""""#,
            r#""é\n\"\\\u001f\u0000""#,
            "[]",
            "{}",
            r#"{"a":1,"b":[true,null,{"a":"x"}]}"#,
            r#"{"i":7,"tag":"bench"}"#,
        ] {
            assert!(is_canonical(text), "{text} is canonical");
            assert_eq!(rewritten(text).as_deref(), Some(text));
        }
    }

    #[test]
    fn other_texts_of_a_value_are_not_canonical_and_parse_to_it() {
        for text in [
            " 1",
            "1 ",
            "[1, 2]",
            r#"{"a": 1}"#,
            r#"{"a":1,"a":2}"#,
            r#""\/""#,
            r#""\u0041""#,
            r#""\u0008""#,
            r#""\u001F""#,
            "-0",
            "1e20",
            "1E2",
            "1e2",
            "1.50",
            "100.0e0",
            "18446744073709551616",
            "-9223372036854775809",
            "0.10000000000000001",
        ] {
            assert!(!is_canonical(text), "{text} is not canonical");
            let json = Json::parse(text).unwrap();
            assert_eq!(Some(json.as_str().to_owned()), rewritten(text));
            assert!(is_canonical(json.as_str()), "{json} is");
        }
    }

    #[test]
    fn what_is_not_one_json_value_is_refused() {
        for text in [
            "",
            "01",
            "[",
            "]",
            "{",
            r#"{"a"}"#,
            r#"{"a":}"#,
            "[1,]",
            "tru",
            "nul",
            "1.",
            ".5",
            "-",
            "+1",
            "\"\n\"",
            "1 2",
        ] {
            assert!(!is_canonical(text), "{text:?}");
            assert!(Json::parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn deep_or_wide_texts_are_left_to_the_parse() {
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(!is_canonical(&deep));
        assert_eq!(Json::parse(&deep).unwrap().as_str(), deep);
        let wide = Value::Object((0..=MAX_KEYS).map(|i| (format!("k{i}"), json!(i))).collect()).to_string();
        assert!(!is_canonical(&wide));
        assert_eq!(Json::parse(&wide).unwrap().as_str(), wide);
    }

    #[test]
    fn depth_is_the_nesting_of_arrays_and_objects_outside_strings() {
        for (value, depth) in
            [(json!(1), 0), (json!("[{\\\"["), 0), (json!([]), 1), (json!({"a": [1, {"b": "]]"}], "c": [[[]]]}), 4)]
        {
            assert_eq!(Json::from(value).depth(), depth);
        }
    }

    #[test]
    fn the_same_value_with_its_keys_in_another_order_is_the_same_value() {
        let (ab, ba) = (Json::parse(r#"{"a":1,"b":2}"#).unwrap(), Json::parse(r#"{"b":2,"a":1}"#).unwrap());
        assert_ne!(ab, ba);
        assert!(ab.same_value(&ba));
        assert!(!ab.same_value(&Json::parse(r#"{"a":1,"b":3}"#).unwrap()));
        assert!(Json::null().same_value(&Json::from(Value::Null)));
    }

    #[test]
    fn it_serializes_verbatim_and_parses_any_json() {
        let json = Json::parse(r#"{"b":[1,2.5],"a":"é"}"#).unwrap();
        assert_eq!(serde_json::to_string(&json!({"v": json})).unwrap(), r#"{"v":{"b":[1,2.5],"a":"é"}}"#);
        let read = Json::parse(r#"{ "b" : [1, 2.50], "a": "\u00e9" }"#).unwrap();
        assert_eq!(read, json);
        assert_eq!(json, json!({"b": [1, 2.5], "a": "é"}));
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            "\\PC{0,8}".prop_map(Value::from),
            "[\\x00-\\x7f]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(("[a-d]{0,2}", inner), 0..6)
                    .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever serde_json writes is canonical (within the depth and key bounds, which these
        /// values stay inside).
        #[test]
        fn everything_serde_json_writes_is_canonical(value in arb_value()) {
            let text = value.to_string();
            prop_assert!(is_canonical(&text), "{}", text);
            let json = Json::from_value(&value);
            prop_assert_eq!(json.as_str(), text.as_str());
        }

        /// What is taken as canonical is exactly what a parse and a write give back, however
        /// the text was changed.
        #[test]
        fn what_is_canonical_is_what_a_parse_and_a_write_give(
            value in arb_value(),
            at in any::<prop::sample::Index>(),
            byte in prop::sample::select(b" \t\n,:[]{}\"\\/0123456789-+.eEnul5".to_vec()),
            change in 0..3u8,
        ) {
            let mut bytes = value.to_string().into_bytes();
            let i = at.index(bytes.len() + 1);
            match change {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ if i < bytes.len() => { bytes.remove(i); }
                _ => bytes.push(byte),
            }
            let Ok(text) = String::from_utf8(bytes) else { return Ok(()) };
            if is_canonical(&text) {
                let again = rewritten(&text);
                prop_assert_eq!(again.as_deref(), Some(text.as_str()));
            }
            match (Json::parse(&text), rewritten(&text)) {
                (Ok(json), Some(again)) => prop_assert_eq!(json.as_str(), again.as_str()),
                (Err(_), None) => {}
                (json, again) => prop_assert!(false, "{:?} against {:?}", json.ok(), again),
            }
        }
    }
}
