pub mod transformer;
pub mod vae;
pub mod umt5;
pub mod attention;
pub mod ops;
pub mod rope;
pub mod position;
