//! Well-known providers, so `apx init` can offer them by name. Every
//! OpenAI-compatible service is an entry here, not new code: they all use the
//! one [`openai`](super::openai) adapter.

use super::ProviderKind;

/// A provider a user can pick by name.
#[derive(Clone, Copy, Debug)]
pub struct CatalogEntry {
    /// Name used in `apx init --provider` and as the `[providers.<name>]` key.
    pub name: &'static str,
    pub display_name: &'static str,
    pub kind: ProviderKind,
    pub base_url: &'static str,
    /// Environment variable the provider's own tools read the key from;
    /// `None` for local servers that take no key.
    pub key_env: Option<&'static str>,
    /// A model to configure by default.
    pub default_model: &'static str,
}

pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        name: "openai",
        display_name: "OpenAI",
        kind: ProviderKind::OpenAi,
        base_url: "https://api.openai.com/v1",
        key_env: Some("OPENAI_API_KEY"),
        default_model: "gpt-4o-mini",
    },
    CatalogEntry {
        name: "anthropic",
        display_name: "Anthropic",
        kind: ProviderKind::Anthropic,
        base_url: "https://api.anthropic.com",
        key_env: Some("ANTHROPIC_API_KEY"),
        default_model: "claude-sonnet-4-5",
    },
    CatalogEntry {
        name: "mistral",
        display_name: "Mistral",
        kind: ProviderKind::OpenAi,
        base_url: "https://api.mistral.ai/v1",
        key_env: Some("MISTRAL_API_KEY"),
        default_model: "mistral-small-latest",
    },
    CatalogEntry {
        name: "groq",
        display_name: "Groq",
        kind: ProviderKind::OpenAi,
        base_url: "https://api.groq.com/openai/v1",
        key_env: Some("GROQ_API_KEY"),
        default_model: "llama-3.3-70b-versatile",
    },
    CatalogEntry {
        name: "deepseek",
        display_name: "DeepSeek",
        kind: ProviderKind::OpenAi,
        base_url: "https://api.deepseek.com/v1",
        key_env: Some("DEEPSEEK_API_KEY"),
        default_model: "deepseek-chat",
    },
    CatalogEntry {
        name: "openrouter",
        display_name: "OpenRouter",
        kind: ProviderKind::OpenAi,
        base_url: "https://openrouter.ai/api/v1",
        key_env: Some("OPENROUTER_API_KEY"),
        default_model: "openai/gpt-4o-mini",
    },
    CatalogEntry {
        name: "together",
        display_name: "Together AI",
        kind: ProviderKind::OpenAi,
        base_url: "https://api.together.xyz/v1",
        key_env: Some("TOGETHER_API_KEY"),
        default_model: "meta-llama/Llama-3.3-70B-Instruct-Turbo",
    },
    CatalogEntry {
        name: "ollama",
        display_name: "Ollama (local)",
        kind: ProviderKind::OpenAi,
        base_url: "http://127.0.0.1:11434/v1",
        key_env: None,
        default_model: "llama3.2",
    },
    CatalogEntry {
        name: "vllm",
        display_name: "vLLM (local)",
        kind: ProviderKind::OpenAi,
        base_url: "http://127.0.0.1:8000/v1",
        key_env: None,
        default_model: "default",
    },
];

pub fn find(name: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|entry| entry.name == name)
}
