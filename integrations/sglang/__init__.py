"""SGLang's radix cache under the adapter protocol (`kvclaims.sglang`): stock, and with claims."""
