"""Other libraries' weights -> vitkit: timm ViT/DeiT/hybrid and transformers ViT.

    from vitkit.convert import from_timm, from_hf
    model = from_timm(timm_vit)          # or from_hf(hf_vit)
    model.save_pretrained("my_vit")      # then vitkit.create_model("my_vit")

timm and transformers are imported by the caller, never by vitkit itself.
"""
from vitkit.convert.hf import convert_hf_state_dict, from_hf, hf_config
from vitkit.convert.timm import convert_timm_state_dict, from_timm, timm_config

__all__ = ["convert_hf_state_dict", "convert_timm_state_dict", "from_hf", "from_timm", "hf_config", "timm_config"]
