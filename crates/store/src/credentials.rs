//! Operator passwords and the cluster's internal secret.
//!
//! Passwords are stored only as argon2id PHC strings in the replicated state; the internal secret
//! is random and authenticates node-to-node RPC.

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use flotilla_model::Credentials;

/// Hashes `password` for storage in [`Credentials::password_hash`].
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters hashes any password")
        .to_string()
}

/// True when `username`/`password` match the stored credentials.
pub fn verify(credentials: &Credentials, username: &str, password: &str) -> bool {
    if credentials.username != username {
        return false;
    }
    let Ok(hash) = PasswordHash::new(&credentials.password_hash) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok()
}

/// A fresh random secret, 32 bytes as hex.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hashed_password_verifies_and_a_wrong_one_does_not() {
        let creds = Credentials {
            username: "admin".into(),
            password_hash: hash_password("s3cret"),
        };
        assert!(!creds.password_hash.contains("s3cret"));
        assert!(verify(&creds, "admin", "s3cret"));
        assert!(!verify(&creds, "admin", "wrong"));
        assert!(!verify(&creds, "other", "s3cret"));
    }
}
