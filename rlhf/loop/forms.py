"""The loop's forms: start a round from the timeline, make a project a blind arena."""

from __future__ import annotations

from typing import Any

from django import forms
from django.db.models import QuerySet

from generation.models import ModelVersion
from generation.shapes.world import held_out_captions
from rlhf.runs.forms import StartVersionField


class RoundStartForm(forms.Form):
    """Start a round of the loop from the timeline (simulated annotators rank; ``RoundConfig`` validates)."""

    method = forms.ChoiceField(choices=[("dpo", "Diffusion-DPO on the round's pairs"),
                                        ("ddpo", "DDPO against a reward model trained on the round")])
    prompts = forms.IntegerField(initial=200, min_value=1, max_value=5000, help_text="Shapes-world captions")
    images_per_prompt = forms.IntegerField(initial=4, min_value=2, max_value=8)
    annotators = forms.IntegerField(initial=3, min_value=1, max_value=20, help_text="Simulated annotators")
    preference = forms.ChoiceField(help_text="What the simulated annotators prefer")
    temperature = forms.FloatField(initial=0.02, min_value=0.0, max_value=10.0,
                                   help_text="Bradley-Terry noise of their choices, in the preference's units")
    label_accuracy = forms.FloatField(required=False, min_value=0.5, max_value=1.0,
                                      help_text="Or the share of their pairwise choices that agree with the "
                                                "preference (0.5 = coin flips); set, it replaces the temperature, "
                                                "calibrated on each round's images")
    start_version = StartVersionField(queryset=ModelVersion.objects.none(), required=False,
                                      help_text="The first round's model; later rounds use the last output")

    def __init__(self, *args: Any, preferences: list[str], versions: QuerySet[ModelVersion], first_round: bool,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["preference"].choices = [(name, name.replace("_", " ")) for name in preferences]
        self.fields["start_version"].queryset = versions
        self.fields["start_version"].required = first_round
        if not first_round:
            self.fields["start_version"].widget = forms.HiddenInput()


class ArenaSetupForm(forms.Form):
    """Make a project a blind arena between model versions (``arena_setup`` validates the rest)."""

    versions = forms.ModelMultipleChoiceField(queryset=ModelVersion.objects.none(),
                                              widget=forms.CheckboxSelectMultiple,
                                              help_text="Two or more versions; voters never see which is which")
    prompts = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 6}),
                              help_text="One prompt per line")
    held_out_captions = forms.IntegerField(required=False, min_value=0, max_value=500, initial=0,
                                           help_text="Or add this many held-out shapes-world captions")
    seeds = forms.CharField(initial="0,1", help_text="Comma-separated; every version renders each prompt with each")

    def __init__(self, *args: Any, versions: QuerySet[ModelVersion], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["versions"].queryset = versions

    def clean_seeds(self) -> list[int]:
        seeds = []
        for part in self.cleaned_data["seeds"].split(","):
            if part.strip():
                try:
                    seeds.append(int(part))
                except ValueError:
                    raise forms.ValidationError(f"{part.strip()!r} is not a whole number.") from None
        return seeds

    def clean_prompts(self) -> list[str]:
        prompts = []
        for number, line in enumerate(self.cleaned_data["prompts"].splitlines(), start=1):
            if len(line.strip()) > 1000:
                raise forms.ValidationError(f"Line {number}: a prompt has at most 1000 characters.")
            if line.strip():
                prompts.append(line.strip())
        return prompts

    def prompt_list(self) -> list[str]:
        """The typed prompts, then the held-out captions asked for."""
        count = self.cleaned_data["held_out_captions"] or 0
        return self.cleaned_data["prompts"] + (held_out_captions(count) if count else [])
