"""LoRA on SAM3: which layers adapt, and adapters on disk.

- ``apply``    ``apply_lora_to_model``: components and layer names -> a PEFT model of
               ``lora.method`` (LoRA, LoHa, LoKr, AdaLoRA, VeRA, IA3); counts; the method's
               training hooks (AdaLoRA's rank allocation)
- ``adapter``  self-describing adapter folders: save, check against the base, load
- ``weights``  a run's weights (adapter or whole model) onto their base, ready to use
"""
