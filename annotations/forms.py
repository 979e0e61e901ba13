from django import forms

from annotations.models import CentreRole, User


class MembershipForm(forms.Form):
    user = forms.ModelChoiceField(queryset=User.objects.none(), label="User")
    role = forms.ChoiceField(choices=CentreRole.choices)

    def __init__(self, *args, users=None, **kwargs):
        super().__init__(*args, **kwargs)
        if users is not None:
            self.fields["user"].queryset = users
