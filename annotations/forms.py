from django import forms

from annotations.models import (
    Bethesda,
    CentreRole,
    Diagnosis,
    NoduleLocation,
    PathologyOutcome,
    PathologySource,
    ScanPlane,
    Sex,
    User,
)


class MembershipForm(forms.Form):
    user = forms.ModelChoiceField(queryset=User.objects.none(), label="User")
    role = forms.ChoiceField(choices=CentreRole.choices)

    def __init__(self, *args, users=None, **kwargs):
        super().__init__(*args, **kwargs)
        if users is not None:
            self.fields["user"].queryset = users


class CaseForm(forms.Form):
    """A nodule to upload videos of, with its patient (created when the code is new)."""

    patient_code = forms.CharField(max_length=64, label="Patient pseudonym",
                                   help_text="The centre's code, never a name.")
    sex = forms.ChoiceField(choices=Sex.choices, initial=Sex.UNKNOWN, required=False)
    age_at_exam = forms.IntegerField(min_value=0, max_value=120, required=False,
                                     label="Age at examination")
    nodule_code = forms.CharField(max_length=64, initial="N1", label="Nodule")
    location = forms.ChoiceField(choices=NoduleLocation.choices, initial=NoduleLocation.UNKNOWN,
                                 required=False)
    max_diameter_mm = forms.DecimalField(min_value=0, max_value=150, decimal_places=1,
                                         required=False, label="Maximum diameter (mm)")
    scan_plane = forms.ChoiceField(choices=ScanPlane.choices, initial=ScanPlane.SWEEP,
                                   label="Scan plane of the videos")


class PathologyForm(forms.Form):
    outcome = forms.ChoiceField(choices=PathologyOutcome.choices)
    source = forms.ChoiceField(choices=PathologySource.choices)
    diagnosis = forms.ChoiceField(choices=[("", "—"), *Diagnosis.choices], required=False,
                                  label="Diagnosis (WHO 2022)")
    bethesda = forms.ChoiceField(choices=[("", "—"), *Bethesda.choices], required=False,
                                 label="Bethesda category (FNA only)")
    date = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
