//! Serde glue for the generated `berth.v1` types: Kubernetes leaves empty
//! fields out of JSON and YAML, and accepts numbers where it documents
//! strings ("int or string" ports, quantities such as `cpu: 1`).

use std::collections::BTreeMap;
use std::fmt;

use serde::de;
use serde::Deserializer;

/// Leaves a field out of the output when it holds its default value.
pub fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

struct IntOrString;

impl de::Visitor<'_> for IntOrString {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number or a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

/// A field Kubernetes types as "int or string".
pub fn int_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_any(IntOrString)
}

struct QuantityMap;

impl<'de> de::Visitor<'de> for QuantityMap {
    type Value = BTreeMap<String, String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of resource names to quantities")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        struct Quantity(String);
        impl<'de> de::Deserialize<'de> for Quantity {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(IntOrString).map(Quantity)
            }
        }
        let mut out = BTreeMap::new();
        while let Some((k, Quantity(v))) = map.next_entry::<String, Quantity>()? {
            out.insert(k, v);
        }
        Ok(out)
    }
}

/// Resource quantities by name; numbers are taken as their decimal text.
pub fn quantity_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    d.deserialize_map(QuantityMap)
}

struct FileMode;

impl de::Visitor<'_> for FileMode {
    type Value = Option<i32>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("file permission bits: a number such as 420, or octal such as 0644")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        i32::try_from(v)
            .map(Some)
            .map_err(|_| E::custom(format!("{v} is not a file mode: use 0 to 0777")))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
    }

    /// YAML 1.2 reads `0644` as a string; Kubernetes' YAML (1.1) reads it
    /// as octal, and manifests are written for that.
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let octal = v.strip_prefix("0o").or_else(|| v.strip_prefix('0'));
        octal
            .filter(|digits| !digits.is_empty())
            .and_then(|digits| i32::from_str_radix(digits, 8).ok())
            .map(Some)
            .ok_or_else(|| {
                E::custom(format!(
                    "{v:?} is not a file mode: write it as octal (0644) or as a number (420)"
                ))
            })
    }
}

/// Permission bits of a file in a volume (`mode`, `defaultMode`).
pub fn file_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
    d.deserialize_any(FileMode)
}
