//! `puente data-key`: the keyring of data keys that seal message bodies at rest.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::store::DataKeys;

/// Arguments of `puente data-key`.
#[derive(Debug, Args)]
pub struct DataKeyArgs {
    /// What to do.
    #[command(subcommand)]
    command: DataKeyCommand,
}

#[derive(Debug, Subcommand)]
enum DataKeyCommand {
    /// Add a fresh random key to a keyring (creating it, mode 0600). The new key seals new
    /// message bodies from the server's next start; older keys keep opening what they sealed.
    New {
        /// The keyring file, the server's --data-key.
        #[arg(long, env = "PUENTE_DATA_KEY")]
        keyring: PathBuf,
    },
    /// List the key ids of a keyring (never the keys); the last one seals.
    List {
        /// The keyring file, the server's --data-key.
        #[arg(long, env = "PUENTE_DATA_KEY")]
        keyring: PathBuf,
    },
}

/// Runs `puente data-key`.
///
/// # Errors
/// The keyring cannot be read or written.
pub(super) fn run(args: DataKeyArgs) -> anyhow::Result<()> {
    match args.command {
        DataKeyCommand::New { keyring } => {
            let id = DataKeys::add_new(&keyring)?;
            println!("{id}");
            eprintln!(
                "added data key {id} to {}; it seals new message bodies once the server restarts. \
                 Back the keyring up apart from the data directory: without it the bodies cannot be read.",
                keyring.display()
            );
        }
        DataKeyCommand::List { keyring } => {
            let keys = DataKeys::load(&keyring)?;
            for id in keys.ids() {
                println!("{id}");
            }
        }
    }
    Ok(())
}
