//! Binary-safe Redis strings that serialize as readable JSON strings.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A Redis string (value, field, member): any bytes.
///
/// Serialized as a JSON string in which each byte is the character of the same number
/// (U+0000..U+00FF, "Latin-1"): lossless for any bytes, readable for ASCII, and decodable by
/// any JSON library (a Lua script maps characters back to bytes with `string.char`).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Blob(pub Vec<u8>);

impl Blob {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<&str> for Blob {
    fn from(s: &str) -> Self {
        Blob(s.as_bytes().to_vec())
    }
}

impl From<String> for Blob {
    fn from(s: String) -> Self {
        Blob(s.into_bytes())
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text: String = self.0.iter().map(|&b| char::from(b)).collect();
        serializer.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.chars()
            .map(|c| u8::try_from(u32::from(c)).map_err(|_| c))
            .collect::<Result<Vec<u8>, char>>()
            .map(Blob)
            .map_err(|c| serde::de::Error::custom(format!("blob character {c:?} is not a byte")))
    }
}
