//! placeholder
use crate::component::{BuildContext, Transform};
pub fn build(_ctx: &BuildContext, _options: toml::Table) -> Result<Box<dyn Transform>, Vec<String>> {
    Err(vec!["todo".into()])
}
