"""Techniques that train: distillation fine-tuning (finetune), quantization-aware training (qat) and efficient
architectures trained from scratch (architecture)."""
