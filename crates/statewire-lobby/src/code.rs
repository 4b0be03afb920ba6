//! Join codes and join links.
//!
//! A [`JoinCode`] is six characters from a 31-letter alphabet without the look-alikes `0 O 1 I
//! L` (about 887 million codes), so a player can read it over voice chat and type it in any
//! case. A join link names the lobby too: `statewire://lobby.example.com:7800/K7M2QX`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The characters of a join code, in the order of their values.
pub const CODE_ALPHABET: &[u8; 31] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
/// Characters in a join code.
pub const CODE_LEN: usize = 6;
/// The scheme of a join link.
pub const LINK_SCHEME: &str = "statewire://";

/// A short code naming one game in a lobby; see the [module docs](self).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JoinCode([u8; CODE_LEN]);

/// Why a string is not a join code or a join link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodeError {
    /// Not six characters long.
    #[error("a join code has {CODE_LEN} characters, this one has {0}")]
    Length(usize),
    /// A character outside the alphabet.
    #[error(
        "{0:?} cannot be in a join code (codes use 2-9 and the letters A-Z without I, L and O)"
    )]
    Character(char),
    /// A link without the `statewire://` scheme or without `/CODE`.
    #[error("a join link looks like statewire://HOST:PORT/CODE")]
    Link,
}

impl JoinCode {
    /// The code whose characters are the digits of `value` in base 31 (reduced modulo 31^6),
    /// least significant first: how the lobby turns random numbers into codes.
    pub fn from_u64(mut value: u64) -> JoinCode {
        let mut out = [0u8; CODE_LEN];
        for c in &mut out {
            *c = CODE_ALPHABET[(value % 31) as usize];
            value /= 31;
        }
        JoinCode(out)
    }

    /// A random code from the operating system's random source.
    pub fn random() -> Result<JoinCode, getrandom::Error> {
        Ok(JoinCode::from_u64(getrandom::u64()?))
    }

    /// The six characters, upper case.
    pub fn as_str(&self) -> &str {
        // Every byte is from CODE_ALPHABET (checked on construction), so this is ASCII.
        std::str::from_utf8(&self.0).unwrap_or("??????")
    }

    /// The code's bytes as they go on the wire.
    pub fn to_bytes(self) -> [u8; CODE_LEN] {
        self.0
    }

    /// Reads a code from its wire bytes (upper case only).
    pub fn from_bytes(bytes: [u8; CODE_LEN]) -> Result<JoinCode, CodeError> {
        for &b in &bytes {
            if !CODE_ALPHABET.contains(&b) {
                return Err(CodeError::Character(char::from(b)));
            }
        }
        Ok(JoinCode(bytes))
    }

    /// The join link for this code at `lobby` (`HOST:PORT`).
    pub fn link(&self, lobby: &str) -> String {
        format!("{LINK_SCHEME}{lobby}/{self}")
    }
}

impl FromStr for JoinCode {
    type Err = CodeError;

    /// Reads a code typed by a player: any case, surrounding spaces ignored.
    fn from_str(s: &str) -> Result<JoinCode, CodeError> {
        let s = s.trim();
        let n = s.chars().count();
        if n != CODE_LEN {
            return Err(CodeError::Length(n));
        }
        let mut out = [0u8; CODE_LEN];
        for (slot, ch) in out.iter_mut().zip(s.chars()) {
            let up = ch.to_ascii_uppercase();
            if !up.is_ascii() || !CODE_ALPHABET.contains(&(up as u8)) {
                return Err(CodeError::Character(ch));
            }
            *slot = up as u8;
        }
        Ok(JoinCode(out))
    }
}

impl fmt::Display for JoinCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for JoinCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinCode({self})")
    }
}

/// Splits a join link `statewire://HOST:PORT/CODE` into the lobby (`HOST:PORT`, unresolved)
/// and the code.
pub fn parse_link(link: &str) -> Result<(String, JoinCode), CodeError> {
    let rest = link
        .trim()
        .strip_prefix(LINK_SCHEME)
        .ok_or(CodeError::Link)?;
    let (lobby, code) = rest.rsplit_once('/').ok_or(CodeError::Link)?;
    if lobby.is_empty() || lobby.contains('/') {
        return Err(CodeError::Link);
    }
    Ok((lobby.to_string(), code.parse()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn alphabet_has_no_look_alikes_and_no_repeats() {
        for bad in b"01OIL" {
            assert!(!CODE_ALPHABET.contains(bad), "{}", char::from(*bad));
        }
        let mut sorted = CODE_ALPHABET.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), CODE_ALPHABET.len());
    }

    #[test]
    fn typed_codes_are_read_in_any_case_and_bad_ones_are_explained() {
        let code: JoinCode = " k7m2qx ".parse().unwrap();
        assert_eq!(code.as_str(), "K7M2QX");
        assert_eq!("K7M2Q".parse::<JoinCode>(), Err(CodeError::Length(5)));
        assert_eq!("K7M2Q0".parse::<JoinCode>(), Err(CodeError::Character('0')));
        assert_eq!("K7M2Qé".parse::<JoinCode>(), Err(CodeError::Character('é')));
        let msg = CodeError::Character('O').to_string();
        assert!(msg.contains("without I, L and O"), "{msg}");
    }

    #[test]
    fn links_split_into_lobby_and_code() {
        let code: JoinCode = "K7M2QX".parse().unwrap();
        let link = code.link("lobby.example.com:7800");
        assert_eq!(link, "statewire://lobby.example.com:7800/K7M2QX");
        assert_eq!(
            parse_link(&link),
            Ok(("lobby.example.com:7800".to_string(), code))
        );
        assert_eq!(parse_link("http://x/K7M2QX"), Err(CodeError::Link));
        assert_eq!(parse_link("statewire://K7M2QX"), Err(CodeError::Link));
        assert_eq!(parse_link("statewire:///K7M2QX"), Err(CodeError::Link));
        assert!(matches!(
            parse_link("statewire://h:1/K7M2Q"),
            Err(CodeError::Length(5))
        ));
    }

    proptest! {
        #[test]
        fn every_number_makes_a_code_that_round_trips(v in any::<u64>()) {
            let code = JoinCode::from_u64(v);
            prop_assert_eq!(code.as_str().parse::<JoinCode>(), Ok(code));
            prop_assert_eq!(JoinCode::from_bytes(code.to_bytes()), Ok(code));
        }

        #[test]
        fn wire_bytes_outside_the_alphabet_are_refused(bytes in any::<[u8; CODE_LEN]>()) {
            let ok = bytes.iter().all(|b| CODE_ALPHABET.contains(b));
            prop_assert_eq!(JoinCode::from_bytes(bytes).is_ok(), ok);
        }
    }
}
