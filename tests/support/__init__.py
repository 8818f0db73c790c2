"""What tests share: a fake engine for in-process tests of the HTTP and protocol layers."""
