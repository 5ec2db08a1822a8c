"""Everything a model is stored as, one concern per module:

  state.py     state dicts: .pth (weights_only) and .safetensors I/O, strict key and shape checks
  bundle.py    the model bundle: BundleConfig (its config.json, typed), save / read / load, student heads
  official.py  the released checkpoints: find them in a download folder, convert them into a bundle
  hub.py       download the released files from the Hugging Face Hub
  training.py  training checkpoints (checkpoint_last.pt), and load_tae for any file that holds a TAE
"""
from motionstreamer.checkpoints.bundle import (
                                               BUNDLE_FORMAT,
                                               BUNDLE_VERSION,
                                               STUDENT_FILE,
                                               Bundle,
                                               BundleConfig,
                                               SamplerDefaults,
                                               add_student_head,
                                               bundle_config_of,
                                               load_bundle,
                                               load_student_head,
                                               read_bundle_config,
                                               save_bundle,
)
from motionstreamer.checkpoints.hub import DEFAULT_COMPONENTS, HUB_COMPONENTS, download_official
from motionstreamer.checkpoints.official import (
                                               OFFICIAL_FILES,
                                               convert_official,
                                               find_official_files,
                                               load_official_tae,
                                               tae_end_latent,
)
from motionstreamer.checkpoints.state import (
                                               CheckpointError,
                                               build_for_weights,
                                               load_checkpoint_file,
                                               load_state_dict_strict,
                                               safetensors_shapes,
                                               save_safetensors,
                                               state_mismatches,
                                               strip_prefix,
)
from motionstreamer.checkpoints.training import ema_or_model_state, load_tae, load_training_checkpoint

__all__ = ["BUNDLE_FORMAT", "BUNDLE_VERSION", "DEFAULT_COMPONENTS", "HUB_COMPONENTS", "OFFICIAL_FILES", "STUDENT_FILE",
           "Bundle", "BundleConfig", "CheckpointError", "SamplerDefaults", "add_student_head", "build_for_weights",
           "bundle_config_of", "convert_official", "download_official", "ema_or_model_state", "find_official_files",
           "load_bundle", "load_checkpoint_file", "load_official_tae", "load_state_dict_strict", "load_student_head",
           "load_tae", "load_training_checkpoint", "read_bundle_config", "safetensors_shapes", "save_bundle",
           "save_safetensors", "state_mismatches", "strip_prefix", "tae_end_latent"]
