//! Canonical JSON: object keys sorted by their UTF-8 bytes, no insignificant whitespace, strings
//! escaped as serde_json escapes them. The same value always gives the same bytes, so a digest
//! of canonical JSON identifies the value.
//!
//! Written straight from the typed record by a serde `Serializer` (no `serde_json::Value` tree
//! in between): each object's members are written once into a scratch buffer, then copied out in
//! key order. Scalars are formatted by serde_json itself, so the bytes are exactly those of
//! serde_json's compact form with sorted keys.

use serde::Serialize;
use serde::ser::{self, Impossible};
use serde_json::Value;

/// Serialize `value` as canonical JSON.
///
/// # Errors
/// The `serde_json::Error` when `value` is not a JSON value: its `Serialize` fails, or a map has
/// keys JSON cannot hold (only strings, characters, integers and booleans can be keys).
pub fn to_canonical_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(256);
    value.serialize(Canonical { out: &mut out })?;
    Ok(out)
}

/// Whether `bytes` are exactly the canonical form of the JSON they hold. Bundles refuse
/// documents that are not, so two encodings of one document cannot carry two ids.
pub fn is_canonical(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|value| to_canonical_bytes(&value).ok())
        .is_some_and(|canonical| canonical == bytes)
}

type Error = serde_json::Error;

fn error(message: &str) -> Error {
    <Error as ser::Error>::custom(message)
}

/// Append serde_json's compact form of a scalar.
fn scalar<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), Error> {
    serde_json::to_writer(out, value)
}

/// Writes one value into `out`.
struct Canonical<'a> {
    out: &'a mut Vec<u8>,
}

/// An array being written.
struct Array<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    /// For a tuple variant: the `}` that closes `{"variant":[...]`.
    close_variant: bool,
}

/// An object being written: members go to `scratch` as they come (`entries` holds each one's
/// key and value range), and are copied into `out` in key order at the end.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    scratch: Vec<u8>,
    /// (key range, value range) in `scratch`.
    entries: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
    /// Some key holds an escape (`\`): keys then sort by their unescaped text.
    escaped_keys: bool,
    /// The key of a map entry whose value has not come yet.
    pending_key: Option<std::ops::Range<usize>>,
    /// For a struct variant: the `}` that closes `{"variant":{...}`.
    close_variant: bool,
    /// serde_json's `RawValue`: its one field is JSON text, written in its canonical form.
    raw: bool,
}

impl<'a> Object<'a> {
    fn new(out: &'a mut Vec<u8>, close_variant: bool) -> Self {
        Self {
            out,
            scratch: Vec::with_capacity(128),
            entries: Vec::new(),
            pending_key: None,
            escaped_keys: false,
            close_variant,
            raw: false,
        }
    }

    /// Write the JSON text a `RawValue` holds, parsed and in canonical form.
    fn raw_text<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let Value::String(text) = serde_json::to_value(value)? else {
            return Err(error("raw JSON text is not a string"));
        };
        let parsed: Value = serde_json::from_str(&text)?;
        parsed.serialize(Canonical { out: &mut *self.out })
    }

    /// Append `key` as a JSON string ([`Key`]) to the scratch buffer; returns its range.
    fn push_key<K: Serialize + ?Sized>(&mut self, key: &K) -> Result<std::ops::Range<usize>, Error> {
        let start = self.scratch.len();
        key.serialize(Key { out: &mut self.scratch })?;
        let key = start..self.scratch.len();
        self.escaped_keys |= self.scratch[key.clone()].contains(&b'\\');
        Ok(key)
    }

    fn push_value<T: Serialize + ?Sized>(&mut self, key: std::ops::Range<usize>, value: &T) -> Result<(), Error> {
        let start = self.scratch.len();
        value.serialize(Canonical { out: &mut self.scratch })?;
        self.entries.push((key, start..self.scratch.len()));
        Ok(())
    }

    fn finish(mut self) -> Result<(), Error> {
        if self.raw {
            return Ok(());
        }
        let scratch = &self.scratch;
        // Without escapes a key's bytes between its quotes are its text; with them, compare the
        // unescaped text (escaping rewrites characters below U+0020, `"` and `\`, out of order).
        if self.escaped_keys {
            self.entries.sort_by(|a, b| unescaped_order(&scratch[a.0.clone()], &scratch[b.0.clone()]));
        } else {
            // Between the quotes: a closing quote must not sort against a content byte (`!`).
            let text = |key: &std::ops::Range<usize>| &scratch[key.start + 1..key.end - 1];
            self.entries.sort_by(|a, b| text(&a.0).cmp(text(&b.0)));
        }
        self.out.push(b'{');
        let mut first = true;
        for (i, (key, value)) in self.entries.iter().enumerate() {
            // A key given twice keeps its last value, as a JSON object does.
            if self.entries.get(i + 1).is_some_and(|next| scratch[next.0.clone()] == scratch[key.clone()]) {
                continue;
            }
            if !first {
                self.out.push(b',');
            }
            first = false;
            self.out.extend_from_slice(&scratch[key.clone()]);
            self.out.push(b':');
            self.out.extend_from_slice(&scratch[value.clone()]);
        }
        self.out.push(b'}');
        if self.close_variant {
            self.out.push(b'}');
        }
        Ok(())
    }
}

/// Order two escaped JSON strings (quotes included) as their unescaped contents order.
fn unescaped_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    if !a.contains(&b'\\') && !b.contains(&b'\\') {
        // Compare the contents: the closing quote must not sort against a content byte.
        return a[1..a.len() - 1].cmp(&b[1..b.len() - 1]);
    }
    let unescape = |s: &[u8]| serde_json::from_slice::<String>(s).unwrap_or_default();
    unescape(a).cmp(&unescape(b))
}

/// Scalars are written by serde_json itself, so they are exactly its compact form.
macro_rules! scalar_methods {
    ($($method:ident : $type:ty),*) => {$(
        fn $method(self, v: $type) -> Result<(), Error> {
            scalar(self.out, &v)
        }
    )*};
}

/// Integer keys become their decimal text, as serde_json writes them.
macro_rules! integer_key_methods {
    ($($method:ident : $type:ty),*) => {$(
        fn $method(self, v: $type) -> Result<(), Error> {
            self.text(&v.to_string())
        }
    )*};
}

impl<'a> ser::Serializer for Canonical<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Array<'a>;
    type SerializeTuple = Array<'a>;
    type SerializeTupleStruct = Array<'a>;
    type SerializeTupleVariant = Array<'a>;
    type SerializeMap = Object<'a>;
    type SerializeStruct = Object<'a>;
    type SerializeStructVariant = Object<'a>;

    scalar_methods!(
        serialize_bool: bool,
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i32: i32,
        serialize_i64: i64,
        serialize_u8: u8,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_u64: u64,
        serialize_f64: f64,
        serialize_char: char
    );
    // As a JSON value holds them: an f32 widened to f64, 128-bit integers only within 64 bits
    // (a larger one would not read back as the same number, so it could never verify).
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        scalar(self.out, &f64::from(v))
    }
    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        match (i64::try_from(v), u64::try_from(v)) {
            (Ok(v), _) => scalar(self.out, &v),
            (_, Ok(v)) => scalar(self.out, &v),
            _ => Err(error("number out of range")),
        }
    }
    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        u64::try_from(v).map_err(|_| error("number out of range")).and_then(|v| scalar(self.out, &v))
    }
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        scalar(self.out, v)
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        scalar(self.out, v)
    }
    fn serialize_none(self) -> Result<(), Error> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        self.serialize_none()
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        self.serialize_none()
    }
    fn serialize_unit_variant(self, _name: &'static str, _index: u32, variant: &'static str) -> Result<(), Error> {
        scalar(self.out, variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _name: &'static str, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.out.push(b'{');
        scalar(self.out, variant)?;
        self.out.push(b':');
        value.serialize(Canonical { out: &mut *self.out })?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Array<'a>, Error> {
        self.out.push(b'[');
        Ok(Array { out: self.out, first: true, close_variant: false })
    }
    fn serialize_tuple(self, len: usize) -> Result<Array<'a>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Array<'a>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Array<'a>, Error> {
        self.out.push(b'{');
        scalar(self.out, variant)?;
        self.out.extend_from_slice(b":[");
        Ok(Array { out: self.out, first: true, close_variant: true })
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Object<'a>, Error> {
        Ok(Object::new(self.out, false))
    }
    fn serialize_struct(self, name: &'static str, _len: usize) -> Result<Object<'a>, Error> {
        let mut object = Object::new(self.out, false);
        object.raw = name == RAW_VALUE_TOKEN;
        Ok(object)
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Object<'a>, Error> {
        self.out.push(b'{');
        scalar(self.out, variant)?;
        self.out.push(b':');
        Ok(Object::new(self.out, true))
    }
}

/// The struct name serde_json gives `RawValue` when serializing it.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

impl Array<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        value.serialize(Canonical { out: &mut *self.out })
    }

    fn close(self) -> Result<(), Error> {
        self.out.push(b']');
        if self.close_variant {
            self.out.push(b'}');
        }
        Ok(())
    }
}

/// The four array-shaped serializers of serde, all writing elements the same way.
macro_rules! array_serializer {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for Array<'_> {
            type Ok = ();
            type Error = Error;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                self.element(value)
            }
            fn end(self) -> Result<(), Error> {
                self.close()
            }
        }
    )*};
}

array_serializer!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeMap for Object<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.pending_key = Some(self.push_key(key)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let key = self.pending_key.take().ok_or_else(|| error("a map value came without its key"))?;
        self.push_value(key, value)
    }
    fn end(self) -> Result<(), Error> {
        self.finish()
    }
}

impl ser::SerializeStruct for Object<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Error> {
        if self.raw {
            return self.raw_text(value);
        }
        let key = self.push_key(key)?;
        self.push_value(key, value)
    }
    fn end(self) -> Result<(), Error> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for Object<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Error> {
        ser::SerializeStruct::serialize_field(self, key, value)
    }
    fn end(self) -> Result<(), Error> {
        self.finish()
    }
}

/// Writes a map key as a JSON string: strings and characters as they are, integers and booleans
/// in their decimal or `true`/`false` text (as serde_json does); anything else is an error.
struct Key<'a> {
    out: &'a mut Vec<u8>,
}

impl Key<'_> {
    fn text(self, text: &str) -> Result<(), Error> {
        scalar(self.out, text)
    }
}

/// Write a finite float key as the JSON string of its serde_json text.
fn float_key<T: Serialize>(out: &mut Vec<u8>, finite: bool, v: &T) -> Result<(), Error> {
    if !finite {
        return Err(error("float key must be finite (got NaN or +/-inf)"));
    }
    let text = serde_json::to_string(v)?;
    scalar(out, &text)
}

fn key_must_be_a_string() -> Error {
    error("key must be a string")
}

impl ser::Serializer for Key<'_> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Impossible<(), Error>;
    type SerializeTuple = Impossible<(), Error>;
    type SerializeTupleStruct = Impossible<(), Error>;
    type SerializeTupleVariant = Impossible<(), Error>;
    type SerializeMap = Impossible<(), Error>;
    type SerializeStruct = Impossible<(), Error>;
    type SerializeStructVariant = Impossible<(), Error>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.text(if v { "true" } else { "false" })
    }
    integer_key_methods!(
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i32: i32,
        serialize_i64: i64,
        serialize_i128: i128,
        serialize_u8: u8,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_u64: u64,
        serialize_u128: u128
    );
    // Finite floats become their shortest decimal text, as serde_json writes such keys.
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        float_key(self.out, v.is_finite(), &v)
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        float_key(self.out, v.is_finite(), &v)
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.text(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.text(v)
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<(), Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_none(self) -> Result<(), Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<(), Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_unit(self) -> Result<(), Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_unit_variant(self, _name: &'static str, _index: u32, variant: &'static str) -> Result<(), Error> {
        self.text(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _name: &'static str, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<(), Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Self::SerializeTupleStruct, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self::SerializeStruct, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(key_must_be_a_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    /// The definition this module implements, the slow way: through a `Value` tree with its
    /// object keys sorted. The serializer must give exactly these bytes.
    fn via_value<T: Serialize>(value: &T) -> Vec<u8> {
        fn write(value: &Value, out: &mut Vec<u8>) {
            match value {
                Value::Object(map) => {
                    let mut keys: Vec<&String> = map.keys().collect();
                    keys.sort();
                    out.push(b'{');
                    for (i, key) in keys.into_iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        serde_json::to_writer(&mut *out, key).expect("a key");
                        out.push(b':');
                        write(&map[key], out);
                    }
                    out.push(b'}');
                }
                Value::Array(items) => {
                    out.push(b'[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        write(item, out);
                    }
                    out.push(b']');
                }
                scalar => serde_json::to_writer(&mut *out, scalar).expect("a scalar"),
            }
        }
        let mut out = Vec::new();
        write(&serde_json::to_value(value).expect("a value"), &mut out);
        out
    }

    #[test]
    fn keys_are_sorted_at_every_depth() {
        let value = serde_json::json!({"b": 1, "a": {"d": [true, null], "c": "x\"y"}});
        let bytes = to_canonical_bytes(&value).expect("serializes");
        assert_eq!(String::from_utf8(bytes.clone()).expect("utf-8"), r#"{"a":{"c":"x\"y","d":[true,null]},"b":1}"#);
        assert!(is_canonical(&bytes));
        assert!(!is_canonical(br#"{"b":1,"a":2}"#));
        assert!(!is_canonical(br#"{"a": 2}"#));
    }

    #[derive(Serialize)]
    enum Shape {
        Unit,
        Newtype(u8),
        Tuple(u8, String),
        Struct { zeta: u8, alpha: Option<u8> },
    }

    #[derive(Serialize)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    enum Tagged {
        Clock { ns: u64 },
        Read { path: String, bytes: u64 },
    }

    #[derive(Serialize)]
    struct Inner {
        z: f64,
        a: Vec<Shape>,
    }

    #[derive(Serialize)]
    struct Record {
        zulu: &'static str,
        alpha: i64,
        #[serde(flatten)]
        inner: Inner,
        bytes: &'static [u8],
        tagged: Vec<Tagged>,
        numbered: BTreeMap<u32, bool>,
        hashed: HashMap<String, u8>,
        nothing: (),
        tuple: (u8, char, bool),
        big: u128,
        raw: Raw,
    }

    /// Serializes as serde_json's `RawValue` does (whose `raw_value` feature this crate's tests
    /// may not have).
    struct Raw(&'static str);

    impl Serialize for Raw {
        fn serialize<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            use ser::SerializeStruct;
            let mut s = serializer.serialize_struct(RAW_VALUE_TOKEN, 1)?;
            s.serialize_field(RAW_VALUE_TOKEN, self.0)?;
            s.end()
        }
    }

    #[test]
    fn typed_records_give_the_bytes_of_their_sorted_value() {
        let record = Record {
            zulu: "ünïcode \u{1} \" \\ / \u{2028}",
            alpha: -7,
            inner: Inner {
                z: 1.5,
                a: vec![
                    Shape::Unit,
                    Shape::Newtype(3),
                    Shape::Tuple(1, "t".into()),
                    Shape::Struct { zeta: 1, alpha: None },
                ],
            },
            bytes: b"\x00\xff",
            tagged: vec![Tagged::Read { path: "/data".into(), bytes: 3 }, Tagged::Clock { ns: 9 }],
            numbered: [(10, true), (2, false)].into_iter().collect(),
            hashed: [("b".to_string(), 2), ("a".to_string(), 1), ("aa".to_string(), 3), ("".to_string(), 0)]
                .into_iter()
                .collect(),
            nothing: (),
            tuple: (1, 'c', false),
            big: u128::from(u64::MAX),
            raw: Raw(r#"{"b": [1, {"d": 2, "c": 3}], "a": null}"#),
        };
        let bytes = to_canonical_bytes(&record).expect("serializes");
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        let mut expected = serde_json::to_value(&record).expect("value");
        expected["raw"] = serde_json::json!({"a": null, "b": [1, {"c": 3, "d": 2}]});
        assert_eq!(text, String::from_utf8(via_value(&expected)).expect("utf-8"));
        assert!(text.contains(r#""raw":{"a":null,"b":[1,{"c":3,"d":2}]}"#), "{text}");
        assert!(is_canonical(&bytes));
    }

    #[test]
    fn a_key_sorts_before_its_extensions_whatever_follows() {
        let map: HashMap<String, u8> =
            [("a", 1), ("a!", 2), ("a ", 3), ("ab", 4)].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(to_canonical_bytes(&map).expect("serializes"), br#"{"a":1,"a ":3,"a!":2,"ab":4}"#);
    }

    #[test]
    fn keys_order_by_their_text_not_their_escapes() {
        // '\u{1}' escapes to "\u0001" and '"' to "\"": both must still sort by the character.
        let map: BTreeMap<String, u8> = [("a\u{1}", 1), ("a\"", 2), ("a", 3), ("a\\", 4), ("a!", 5), ("a\u{1f}b", 6)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(to_canonical_bytes(&map).expect("serializes"), via_value(&map));
        let value = serde_json::to_value(&map).expect("value");
        assert_eq!(to_canonical_bytes(&value).expect("serializes"), via_value(&map));
    }

    #[derive(Serialize)]
    struct Numbers {
        narrow: f32,
        wide: f64,
        small_i128: i128,
        unsigned_i128: i128,
        small_u128: u128,
    }

    #[test]
    fn numbers_are_written_as_a_json_value_holds_them() {
        let numbers =
            Numbers { narrow: 0.1, wide: 15.5, small_i128: -5, unsigned_i128: i128::from(u64::MAX), small_u128: 7 };
        let bytes = to_canonical_bytes(&numbers).expect("serializes");
        assert_eq!(bytes, via_value(&numbers));
        assert!(String::from_utf8(bytes).expect("utf-8").contains("0.10000000149011612"), "f32 widened as before");
        // Out of 64-bit range: refused as before, not written as a number that reads back as
        // another.
        assert!(to_canonical_bytes(&u128::MAX).is_err() && serde_json::to_value(u128::MAX).is_err());
        assert!(to_canonical_bytes(&i128::MIN).is_err() && serde_json::to_value(i128::MIN).is_err());
        // Float keys: finite ones as their text, as a JSON value writes them.
        #[derive(Serialize)]
        struct FloatKeys(#[serde(serialize_with = "float_map")] ());
        fn float_map<S: ser::Serializer>(_: &(), serializer: S) -> Result<S::Ok, S::Error> {
            use ser::SerializeMap;
            let mut map = serializer.serialize_map(Some(2))?;
            map.serialize_entry(&1.5f64, &1)?;
            map.serialize_entry(&0.25f32, &2)?;
            map.end()
        }
        assert_eq!(to_canonical_bytes(&FloatKeys(())).expect("serializes"), via_value(&FloatKeys(())));
    }

    #[test]
    fn keys_json_cannot_hold_are_errors() {
        let map: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into_iter().collect();
        assert!(to_canonical_bytes(&map).is_err());
        assert!(to_canonical_bytes(&Raw("{not json")).is_err());
    }

    /// Every float a bundle can hold is written in its shortest form and must read back as the
    /// same double, or a document holding it would be judged not canonical (and one that was
    /// canonical when sealed could fail verification later). serde_json's `float_roundtrip`
    /// (Cargo.toml) is what makes this hold: without it, some texts of 17 digits read one
    /// unit in the last place off.
    #[test]
    fn every_float_written_reads_back_as_itself() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut checked = 0;
        while checked < 50_000 {
            // xorshift64: every bit pattern is as likely, so every exponent is tried.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let value = f64::from_bits(state);
            if !value.is_finite() {
                continue;
            }
            let text = to_canonical_bytes(&value).expect("a finite float is JSON");
            assert!(is_canonical(&text), "{} does not read back as {value:e}", String::from_utf8_lossy(&text));
            checked += 1;
        }
        // Values near the edges of the fast paths: a long mantissa, a large and a tiny exponent.
        for value in
            [0.1 + 0.2, 9_007_199_254_740_993.0, 1.797_693_134_862_315_7e308, 5e-324, 2.225_073_858_507_201e-308]
        {
            assert!(is_canonical(&to_canonical_bytes(&value).expect("JSON")), "{value:e}");
        }
    }
}
