"""The browser's forms for reward-model and fine-tune runs (the services validate the values, as for the API)."""

from __future__ import annotations

from django import forms

from generation.models import ModelKind, ModelVersion
from rlhf.models import FineTuneRun, PreferenceExport, RewardModelRun, RewardModelVersion
from rlhf.runs.selectors import finetune_start_versions


class StartVersionField(forms.ModelChoiceField):
    """A model version to fine-tune from: base versions by name; a LoRA version says that training continues it."""

    def label_from_instance(self, obj: ModelVersion) -> str:
        if obj.kind == ModelKind.LORA and obj.parent is not None:
            return f"{obj.name}: continue this LoRA (on {obj.parent.name})"
        return obj.name


HYPERPARAMETER_HELP = "One key = value per line (or a JSON object), e.g. lr = 0.001; leave empty for the preset."


class RewardRunForm(forms.Form):
    name = forms.CharField(required=False, max_length=200)
    export = forms.ModelChoiceField(queryset=PreferenceExport.objects.none())
    backbone = forms.CharField(required=False, max_length=500,
                               help_text="Empty for the preset's own (tiny: 'tiny', shapes: 'shapes_vae'); or "
                                         "'tiny', 'shapes_vae', 'shapes_conv', a local reward-model or CLIP "
                                         "directory, or a CLIP hub id in the local cache")
    preset = forms.ChoiceField(choices=RewardModelRun.Preset.choices, initial="tiny")
    hyperparameters = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 4}),
                                      help_text=HYPERPARAMETER_HELP)


class FineTuneRunForm(forms.Form):
    name = forms.CharField(required=False, max_length=200)
    base_version = StartVersionField(
        queryset=finetune_start_versions(), label="Start from",
        help_text="A base version gets a fresh LoRA; a LoRA version is trained further from its weights")
    method = forms.ChoiceField(choices=FineTuneRun.Method.choices)
    export = forms.ModelChoiceField(queryset=PreferenceExport.objects.none(), required=False,
                                    help_text="DPO: the preference pairs; DDPO: optional caption source")
    reward = forms.ChoiceField(required=False, choices=[("", "—"), ("brightness", "brightness"),
                                                        ("jpeg_compressibility", "jpeg_compressibility")],
                               help_text="DDPO: a built-in reward ...")
    reward_version = forms.ModelChoiceField(queryset=RewardModelVersion.objects.none(), required=False,
                                            help_text="... or a registered reward model")
    prompt_source = forms.ChoiceField(required=False, choices=[("", "—"), ("project", "The project's prompts"),
                                                               ("export", "The export's captions")])
    preset = forms.ChoiceField(choices=FineTuneRun.Preset.choices, initial="tiny")
    hyperparameters = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 4}),
                                      help_text=HYPERPARAMETER_HELP)
    eval_prompts = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}),
                                   help_text="Evaluation prompts, one per line (default: the first training prompts)")
