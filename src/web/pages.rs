//! TEMPORARY STUB (replaced by the real pages module).
use crate::config::{BrandingConfig, Language};
#[derive(Debug, thiserror::Error)]
pub enum PagesError { #[error("{file}: {message}")] Template { file: String, message: String }, #[error("{file}: {message}")] Texts { file: String, message: String }, #[error("{0}")] Io(String) }
pub struct StaticAsset { pub content_type: &'static str, pub body: std::sync::Arc<[u8]>, pub etag: String }
pub struct Pages;
impl Pages {
    pub fn load(_b: &BrandingConfig, _prefix: &str) -> Result<Pages, Vec<PagesError>> { Ok(Pages) }
    pub fn render(&self, name: &str, ctx: minijinja::Value) -> Result<String, PagesError> { Ok(format!("<html>{name} {ctx}</html>")) }
    pub fn render_in(&self, _l: Language, name: &str, ctx: minijinja::Value) -> Result<String, PagesError> { self.render(name, ctx) }
    pub fn render_mail(&self, name: &str, ctx: minijinja::Value) -> Result<(String, String, String), PagesError> { Ok((name.into(), ctx.to_string(), String::new())) }
    pub fn text(&self, key: &str) -> String { key.into() }
    pub fn static_asset(&self, _name: &str) -> Option<&StaticAsset> { None }
    pub fn page_names() -> &'static [&'static str] { &[] }
}
