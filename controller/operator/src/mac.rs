//! HMAC-SHA256 in hex: webhook signatures and the replication keys derived from the master
//! key.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The hex HMAC-SHA256 under `key` of the parts, concatenated.
pub fn hmac_sha256_hex(key: &[u8], parts: &[&[u8]]) -> String {
    // HMAC takes keys of any length, so `new_from_slice` cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        unreachable!("HMAC-SHA256 takes keys of any length")
    };
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}
