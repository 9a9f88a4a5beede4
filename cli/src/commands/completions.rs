//! `apx completions bash|zsh|fish|elvish|powershell`.

use clap_complete::Shell;

pub const HELP: &str = "Examples:
  apx completions bash > ~/.local/share/bash-completion/completions/apx
  apx completions zsh > \"${fpath[1]}/_apx\"
  apx completions fish > ~/.config/fish/completions/apx.fish";

#[derive(clap::Args)]
pub struct Args {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

pub fn run(mut command: clap::Command, args: Args) -> anyhow::Result<()> {
    clap_complete::generate(args.shell, &mut command, "apx", &mut std::io::stdout());
    Ok(())
}
