"""The efficacy lab: small Llama models trained on CPU under several weighting methods and data
scenarios, compared with uniform weighting on paired seeds (DESIGN.md section 10)."""
