"""Forms validate shape (types, ranges); the services refuse what cannot run, with reasons
that the views attach to the fields."""

from __future__ import annotations

from django import forms

from annotations.models import Centre
from webapp.training import hyperparameters as hp
from webapp.training.conf import setting


class SnapshotForm(forms.Form):
    name = forms.CharField(max_length=200)
    centres = forms.ModelMultipleChoiceField(
        queryset=Centre.objects.all(), widget=forms.CheckboxSelectMultiple,
        label="Development centres",
        help_text="Their cases are split by patient into train, validation and internal test "
                  "(70/10/10 of all cases, stratified by label).")
    external_centres = forms.ModelMultipleChoiceField(
        queryset=Centre.objects.all(), widget=forms.CheckboxSelectMultiple, required=False,
        label="External-test centres",
        help_text="Held out whole: every case of these centres is external test.")
    only_accepted = forms.BooleanField(
        required=False, label="Only cases with an accepted consensus annotation",
        help_text="Otherwise every labelled case with a ready video; annotated ones bring "
                  "their calcification masks and nodule boxes.")
    seed = forms.IntegerField(min_value=0, max_value=2**31 - 1, initial=0,
                              help_text="Seed of the split.")


def _choices(values) -> list[tuple[str, str]]:
    return [(v, v) for v in values]


class RunForm(forms.Form):
    snapshot = forms.ModelChoiceField(queryset=None, empty_label=None)
    arch = forms.ChoiceField(label="Architecture")
    preset = forms.ChoiceField(label="Configuration preset")
    gpus = forms.IntegerField(label="GPUs", min_value=1, initial=1,
                              help_text="More than one runs torchrun with one process per GPU.")

    def __init__(self, *args, snapshots=None, **kwargs):
        from ml.models import MODEL_NAMES
        from ml.train import PRESETS

        super().__init__(*args, **kwargs)
        self.fields["snapshot"].queryset = snapshots
        self.fields["arch"].choices = _choices(MODEL_NAMES)
        self.fields["arch"].initial = "irv2_cam"
        self.fields["preset"].choices = _choices(PRESETS)
        self.fields["preset"].initial = "small"
        self.fields["gpus"].max_value = setting("MAX_GPUS")
        self.fields["gpus"].widget.attrs["max"] = setting("MAX_GPUS")
        defaults = hp.defaults("small")
        for p in hp.PARAMETERS:
            label = p.label
            if p.kind is bool:
                field = forms.TypedChoiceField(
                    choices=[("", f"preset ({'on' if defaults[p.name] else 'off'})"),
                             ("true", "on"), ("false", "off")],
                    coerce=lambda v: v == "true", empty_value=None, required=False)
            else:
                kind = forms.IntegerField if p.kind is int else forms.FloatField
                field = kind(required=False, min_value=p.minimum, max_value=p.maximum)
                field.widget.attrs["placeholder"] = f"preset: {defaults[p.name]}"
                if p.kind is float:
                    field.widget.attrs["step"] = "any"
            field.label, field.help_text = label, p.help
            self.fields[f"hp_{p.name}"] = field

    def hyperparameter_fields(self):
        return [self[f"hp_{p.name}"] for p in hp.PARAMETERS]

    def hyperparameters(self) -> dict:
        return {p.name: self.cleaned_data[f"hp_{p.name}"] for p in hp.PARAMETERS
                if self.cleaned_data.get(f"hp_{p.name}") is not None}

    def add_config_errors(self, error: hp.ConfigError) -> None:
        for field, messages in error.errors.items():
            name = field if field in self.fields else f"hp_{field}"
            for message in messages:
                self.add_error(name if name in self.fields else None, message)
