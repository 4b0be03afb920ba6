//! `statewire keygen` and `statewire token`: the token backend's key file and connect tokens.
//!
//! A key file holds one 256-bit key as 64 hexadecimal digits and a newline. Tokens are printed
//! as standard base64 of [`statewire::ConnectToken::encode`].

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use statewire::crypto::{MAX_TOKEN_ADDRS, TOKEN_USER_DATA_LEN};
use statewire::{ConnectToken, Key, TokenParams};
use statewire_core::ClientId;

use crate::parse_addr;

/// Flags of `statewire keygen`.
#[derive(Debug, clap::Args)]
pub(crate) struct KeygenArgs {
    /// Where to write the key (refused if the file exists, unless --force).
    #[arg(long)]
    out: PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    force: bool,
}

/// Flags of `statewire token`.
#[derive(Debug, clap::Args)]
pub(crate) struct TokenArgs {
    /// The backend key file (from `statewire keygen`), shared with the servers.
    #[arg(long)]
    key_file: PathBuf,
    /// The client id the token grants (a positive 64-bit number).
    #[arg(long, value_parser = parse_client_id)]
    client_id: u64,
    /// A server address the token is valid for (as the server's --public-addr); 1 to 4.
    #[arg(long = "server", value_parser = parse_addr, required = true)]
    servers: Vec<SocketAddr>,
    /// Seconds from now until the token expires (1 to 86,400).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    expires: u64,
    /// Idle timeout of the session, in seconds (1 to 3,600).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=3_600))]
    timeout: u32,
    /// Coding of the game the token is for (part of the protocol id).
    #[arg(long, value_enum, default_value_t = crate::sim::CodecKind::Packed)]
    codec: crate::sim::CodecKind,
}

fn parse_client_id(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("the client id must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a whole number from 1 to 2^64-1")),
    }
}

/// Parses a base64 connect token (for `join --token`).
pub(crate) fn parse_token(s: &str) -> Result<ConnectToken, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| format!("the token is not base64: {e}"))?;
    ConnectToken::decode(&bytes).map_err(|e| e.to_string())
}

/// Reads a key file, or says in words why not.
pub(crate) fn read_key(path: &Path) -> Result<Key, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the key file {}: {e}", path.display()))?;
    let hex = text.trim();
    let bad = || {
        format!(
            "{} is not a statewire key file (64 hexadecimal digits; make one with `statewire keygen`)",
            path.display()
        )
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut k = [0u8; 32];
    for (i, byte) in k.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(Key::from_bytes(k))
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("statewire: {msg}");
    ExitCode::from(2)
}

pub(crate) fn keygen(args: KeygenArgs) -> ExitCode {
    if args.out.exists() && !args.force {
        return usage(&format!(
            "{} exists; give --force to overwrite it",
            args.out.display()
        ));
    }
    let key = match Key::try_random() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("statewire: no random source: {e}");
            return ExitCode::FAILURE;
        }
    };
    let hex: String = key.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let written = opts.open(&args.out).and_then(|mut f| writeln!(f, "{hex}"));
    match written {
        Ok(()) => {
            println!("wrote a new key to {}", args.out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("statewire: cannot write {}: {e}", args.out.display());
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn token(args: TokenArgs) -> ExitCode {
    if args.servers.len() > MAX_TOKEN_ADDRS {
        return usage(&format!(
            "a token names at most {MAX_TOKEN_ADDRS} servers, not {}",
            args.servers.len()
        ));
    }
    let key = match read_key(&args.key_file) {
        Ok(k) => k,
        Err(e) => return usage(&e),
    };
    let protocol_id = match crate::rules::protocol_id(args.codec.coding()) {
        Ok(id) => id,
        Err(e) => {
            eprintln!("statewire: {e}");
            return ExitCode::FAILURE;
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let params = TokenParams {
        protocol_id,
        client_id: ClientId(args.client_id),
        server_addrs: args.servers,
        expires_unix_secs: now.saturating_add(args.expires),
        timeout_secs: args.timeout,
        user_data: [0; TOKEN_USER_DATA_LEN],
    };
    match ConnectToken::generate(&key, &params) {
        Ok(t) => {
            println!(
                "{}",
                base64::engine::general_purpose::STANDARD.encode(t.encode())
            );
            ExitCode::SUCCESS
        }
        Err(e) => usage(&e.to_string()),
    }
}
