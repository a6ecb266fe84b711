from __future__ import annotations

from django import forms

from rlhf.models import PreferenceExport


class ExportForm(forms.Form):
    """The browser's export form; ``export_request_parse`` validates the values (as for the API)."""

    name = forms.CharField(required=False, max_length=200)
    format = forms.ChoiceField(choices=PreferenceExport.Format.choices)
    tie_policy = forms.ChoiceField(choices=PreferenceExport.TiePolicy.choices, initial="soft")
    weight_per_prompt = forms.BooleanField(required=False, label="Weight pairs 1/(pairs of the prompt)")
    include_images = forms.BooleanField(required=False, initial=True, label="Include image bytes")
    exclude_rejected = forms.BooleanField(required=False, initial=True, label="Exclude rejected annotations")
    gold = forms.ChoiceField(choices=[("exclude", "Leave gold tasks out"), ("include", "Include gold tasks"),
                                      ("only", "Only gold tasks")], initial="exclude")
    date_from = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    min_agreement = forms.FloatField(required=False, min_value=0, max_value=1)
    template_versions = forms.CharField(required=False, help_text="Comma-separated template version ids")
    model_versions = forms.CharField(required=False, help_text="Comma-separated model version ids")
    annotators = forms.CharField(required=False, help_text="Comma-separated annotator user ids")
    split_train = forms.FloatField(initial=0.8, min_value=0, max_value=1)
    split_validation = forms.FloatField(initial=0.1, min_value=0, max_value=1)
    split_test = forms.FloatField(initial=0.1, min_value=0, max_value=1)
    split_seed = forms.IntegerField(initial=0)
    destination = forms.ChoiceField(
        choices=[("server", "This server (PICKWISE_EXPORT_DIR)"), ("object_store", "Object store (EXPORT_STORAGE_URL)")],
        initial="server", required=False, help_text="Parquet and JSONL exports can go to the object store")
