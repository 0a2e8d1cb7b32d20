//! `godwit image import|list|push`: images in the node's chunk store, and pre-staging them on
//! another node (only the chunks it lacks move).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use super::client::{ActOn, ReadFrom};
use super::exit;

#[derive(Debug, clap::Args)]
pub(super) struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ImageCommand {
    /// Chunk a directory tree into this node's image store; prints the image id.
    Import {
        /// The image's root directory (the program and its files).
        dir: PathBuf,
        /// The agent's configuration (for `[node] data_dir`); the embedded default without it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Images in the store of a running agent.
    List {
        #[command(flatten)]
        api: ReadFrom,
        /// Print the agent's JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Pre-stage an image on another node.
    Push {
        /// The image id (64 hex digits).
        id: String,
        /// The node to push to.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        api: ActOn,
        /// Print the agent's JSON document.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(args: ImageArgs) -> ExitCode {
    match args.command {
        ImageCommand::Import { dir, config } => import(&dir, config.as_deref()),
        ImageCommand::List { api, json } => {
            super::show("image", &api.target(), "/v1/images", json, list)
        }
        ImageCommand::Push { id, to, api, json } => push(&id, &to, &api, json),
    }
}

fn import(dir: &std::path::Path, config: Option<&std::path::Path>) -> ExitCode {
    let cfg = match super::load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let store = match crate::image::ImageStore::open(&cfg.node.data_dir.join("images")) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("godwit image: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match store.import_dir(dir) {
        Ok((id, s)) => {
            println!(
                "{id}\n{} files, {} bytes in {} chunks ({} new, {} bytes)",
                s.files, s.bytes, s.chunks, s.new_chunks, s.new_bytes
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("godwit image: {e}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

fn list(doc: &Value) -> String {
    let mut out = format!(
        "{:<64}  {:>7} {:>12} {:>7}\n",
        "IMAGE", "ENTRIES", "BYTES", "CHUNKS"
    );
    for i in doc["images"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<64}  {:>7} {:>12} {:>7}\n",
            i["id"].as_str().unwrap_or("?"),
            i["entries"],
            i["bytes"],
            i["chunks"]
        ));
    }
    out
}

fn push(id: &str, to: &str, api: &ActOn, json: bool) -> ExitCode {
    let path = format!("/v1/images/{id}/push?to={to}");
    let (id, to) = (id.to_string(), to.to_string());
    super::request(
        "image",
        &api.target(),
        hyper::Method::POST,
        &path,
        Duration::from_secs(600),
        json,
        move |doc| {
            format!(
                "pushed {} to {to}: {} of {} chunks sent ({} bytes, {} on the wire, {} resent)\n",
                doc["id"].as_str().unwrap_or(&id),
                doc["chunks_sent"],
                doc["chunks_total"],
                doc["bytes_sent"],
                doc["wire_bytes"],
                doc["resent"]
            )
        },
    )
}
