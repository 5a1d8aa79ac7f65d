pub fn run(_duration: u32) -> anyhow::Result<()> {
    Ok(())
}
