from __future__ import annotations

from typing import Any

from django import forms


class GenerateForm(forms.Form):
    prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}))
    model_version = forms.TypedChoiceField(coerce=int, label="Model")
    num_images = forms.IntegerField(min_value=1, initial=4, label="Images")
    project = forms.TypedChoiceField(coerce=int, required=False, empty_value=None)

    def __init__(self, *args: Any, model_choices: list[tuple[int, str]], project_choices: list[tuple[int, str]],
                 max_images: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["model_version"].choices = model_choices
        self.fields["project"].choices = [("", "(no project)"), *project_choices]
        self.fields["num_images"].max_value = max_images
        self.fields["num_images"].widget.attrs["max"] = max_images
